"""auto_LiRPA's bounds on a case written by benchmarks.certify_speed: prints one JSON line.

Run by certify_speed in a child process with auto_LiRPA on PYTHONPATH (AUTO_LIRPA_PATH); auto_LiRPA 0.7.1 from its
repository imports and runs on torch 2.14 (../shared/MEASURED.md). The same margins as robustcnn bounds: logit[y]
minus every other logit, by auto_LiRPA's specification matrix C, over the Linf ball clipped to the pixel range.
"""

from __future__ import annotations

import json
import sys
import time

import torch

BATCH = 16  # images per compute_bounds call: auto_LiRPA 0.7.1's CROWN fails on this network with 120 at once


def main(path: str, method: str) -> None:
    import auto_LiRPA
    from auto_LiRPA import BoundedModule

    from benchmarks.certify_speed import digits_residual, resnet18

    case = torch.load(path, weights_only=True)
    model = {"resnet18": resnet18, "digits-residual": digits_residual}[case["arch"]]()
    model.load_state_dict(case["state"])
    x, y = case["x"], case["y"]
    classes = 10
    others = torch.stack([torch.cat([torch.arange(c), torch.arange(c + 1, classes)]) for c in range(classes)])[y]
    spec = torch.eye(classes)[y].unsqueeze(1) - torch.eye(classes)[others]  # (n, 9, 10)
    started = time.perf_counter()
    bounded = BoundedModule(model, torch.zeros_like(x[:1]), device="cpu")
    certified, margins = [], None
    for eps in case["eps"]:
        parts = zip(x.split(BATCH), spec.split(BATCH), strict=True)
        lower = torch.cat([_lower(bounded, part, c, eps, method) for part, c in parts])
        certified.append(int((lower > 0).all(1).sum()))
        margins = lower.min(1).values if margins is None else margins
    seconds = time.perf_counter() - started
    result = {"version": auto_LiRPA.__version__, "seconds": seconds, "certified": certified,
              "median_margin": float(margins.median())}  # fmt: skip
    print(json.dumps(result))


def _lower(bounded, x: torch.Tensor, spec: torch.Tensor, eps: float, method: str) -> torch.Tensor:
    from auto_LiRPA import BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    ball = PerturbationLpNorm(norm=float("inf"), x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
    lower, _ = bounded.compute_bounds(x=(BoundedTensor(x, ball),), C=spec, method=method, bound_upper=False)
    return lower


if __name__ == "__main__":
    main(*sys.argv[1:])
