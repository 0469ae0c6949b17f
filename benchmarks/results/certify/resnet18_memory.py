"""Peak resident memory and time of `crown` (defaults: batch 2, memory_mb 4096) on the zoo's resnet18, 3x32x32,
random weights, 2 images: python benchmarks/results/certify/resnet18_memory.py (output: resnet18-memory.txt)."""

import resource
import time

import torch

from robustcnn.certify.bounds import certified, crown_plan
from robustcnn.models.base import ModelConfig, create_model
from robustcnn.threat import Norm

torch.manual_seed(0)
model = create_model(ModelConfig("resnet18", 3, 32, 32, 10, (0.5,) * 3, (0.25,) * 3)).eval().requires_grad_(False)
x = torch.rand(2, 3, 32, 32)
y = model(x).argmax(1)
_, plan = crown_plan(model, (3, 32, 32), memory=4096 * 2**20 // 2)
started = time.perf_counter()
certified(model, x, y, 1 / 255, Norm.LINF, "crown", 10, memory=4096 * 2**20 // 2)
print(f"ReLU inputs left to intervals: {len(plan.intervals_only())}/{len(plan.relaxed)}")
print(f"crown, 2 images: {time.perf_counter() - started:.1f} s")
print(f"peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
