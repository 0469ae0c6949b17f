"""Writes chain_bounds.npz: the bounds robustcnn's Sequential-only implementation (commit 650fd2d, before bounds
walked graphs) gave for a few chains, with the weights and images they came from. test_certify_graph checks that
the graph path reproduces them bit for bit. Run from the repository root: python tests/data/make_chain_bounds.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustcnn.certify.bounds import bounds
from robustcnn.models.base import ModelConfig, Normalized, create_model
from robustcnn.threat import Norm

OUT = Path(__file__).with_name("chain_bounds.npz")
CASES = [("ibp", Norm.LINF, 0.03), ("crown", Norm.LINF, 0.03), ("ibp", Norm.L2, 0.4), ("crown", Norm.L2, 0.4)]


def chains() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    models = {
        arch: create_model(ModelConfig(arch, c, h, w, 10, (0.2,) * c, (0.3,) * c))
        for arch, (c, h, w) in {"ibpcnn": (1, 8, 8), "smallcnn": (1, 8, 8), "lenet5": (3, 16, 16)}.items()
    }
    pooled = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 10),
    )  # fmt: skip
    overlapping = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(12, 10),
    )  # fmt: skip
    for module in pooled.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(-1.5, 1.5)
    models["pooled"] = Normalized(pooled, (0.13,), (0.31,))
    models["overlapping"] = Normalized(overlapping, (0.13,), (0.31,))
    return {name: model.eval().double().float() for name, model in models.items()}


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    generator = torch.Generator().manual_seed(1)
    for name, model in chains().items():
        for key, value in model.state_dict().items():
            arrays[f"{name}/state/{key}"] = value.numpy()
        shape = {"lenet5": (3, 16, 16)}.get(name, (1, 8, 8))
        x = torch.rand((3, *shape), generator=generator)
        y = torch.randint(0, 10, (3,), generator=generator)
        arrays[f"{name}/x"], arrays[f"{name}/y"] = x.numpy(), y.numpy()
        for method, norm, eps in CASES:
            for labelled in (False, True):
                box = bounds(model, x, eps, norm, method, y=y if labelled else None, num_classes=10)
                key = f"{name}/{method}/{norm.value}/{eps}/{'margins' if labelled else 'logits'}"
                arrays[f"{key}/lower"], arrays[f"{key}/upper"] = box.lower.numpy(), box.upper.numpy()
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({len(arrays)} arrays)")


if __name__ == "__main__":
    main()
