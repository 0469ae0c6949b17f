"""One PGD-k call through our path (robustcnn's `pgd` attack -> ART) against its physical limit.

The limit is k x (forward + backward with respect to the input) of the same batch, written directly in
PyTorch with frozen weights: no attack can do less work per step. Everything else in a PGD step
(random start, sign, step, clip, projection, ART's set-up and numpy round trip) is overhead measured
by the ratio. The attack object is built inside the timed call, as the sweep builds one per eps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import robustcnn
from benchmarks.table import Row
from benchmarks.timing import interleaved
from robustcnn.attacks import ATTACKS, Target
from robustcnn.attacks.art import art_classifier
from robustcnn.attacks.pgd import PgdParams
from robustcnn.devices import fast_layout
from robustcnn.runs import load_run
from robustcnn.threat import Norm

TARGET = 1.15  # one PGD-k call may cost at most this many times k x (forward + backward)


def measure(model_path: Path, batch: int, steps: int, device: torch.device, repeats: int) -> list[Row]:
    run = load_run(model_path)
    info = run.dataset
    model = fast_layout(run.model("best", device), device).requires_grad_(False)  # as the sweep holds it (subjects.py)
    target = Target(art_classifier(model, info.shape, info.num_classes, device), model, device, batch, info.num_classes)
    test = robustcnn.load_dataset(run.meta["config"]["dataset"], "test")
    x, y = test.images(slice(0, batch)).numpy(), test.y[:batch].numpy()  # (batch, C, H, W) in [0, 1], (batch,)
    eps = info.threat_model.eps
    params = PgdParams(steps=steps)

    def ours(_: int = 0) -> np.ndarray:
        attack = ATTACKS.get("pgd")("pgd-linf", Norm.LINF, params, target)
        return attack.generate(x, y, eps)

    x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def limit(_: int = 0) -> torch.Tensor:
        for _ in range(steps):
            x_grad = x_t.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_grad), y_t), x_grad)
        return grad

    ours(), limit()  # warm-up
    timed = interleaved({"ours": ours, "limit": limit}, repeats, device)
    return [
        Row("attack", f"one PGD-{steps} call ({batch} images, {run.path.name}) vs {steps} x (fwd + bwd wrt input)",
            timed["ours"].median / timed["limit"].median, "x limit", target=f"<= {TARGET:g}",
            seconds=timed["ours"].median, spread=timed["ours"].spread,
            baseline=f"{steps} x (forward + backward) in PyTorch", baseline_seconds=timed["limit"].median,
            baseline_spread=timed["limit"].spread, repeats=repeats,
            note="robustcnn pgd attack -> ART ProjectedGradientDescentPyTorch, attack object built in the call")
    ]  # fmt: skip
