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
from benchmarks.timing import Timed, interleaved
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
    test = robustcnn.load_dataset(run.meta["config"]["dataset"], "test")
    x, y = test.images(slice(0, batch)).numpy(), test.y[:batch].numpy()  # (batch, C, H, W) in [0, 1], (batch,)
    timed = pgd_against_limit(model, info.num_classes, x, y, info.threat_model.eps, steps, device, repeats)
    return [
        Row("attack", f"one PGD-{steps} call ({batch} images, {run.path.name}) vs {steps} x (fwd + bwd wrt input)",
            timed["ours"].median / timed["limit"].median, "x limit", target=f"<= {TARGET:g}",
            seconds=timed["ours"].median, spread=timed["ours"].spread,
            baseline=f"{steps} x (forward + backward) in PyTorch", baseline_seconds=timed["limit"].median,
            baseline_spread=timed["limit"].spread, repeats=repeats,
            note="robustcnn pgd attack -> ART ProjectedGradientDescentPyTorch, attack object built in the call")
    ]  # fmt: skip


def limit_passes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int) -> torch.Tensor:
    """`passes` x (forward + backward with respect to the input) of one batch, weights frozen: the limit."""
    for _ in range(passes):
        x_grad = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_grad), y), x_grad)
    return grad


def pgd_against_limit(
    model: torch.nn.Module,
    num_classes: int,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    steps: int,
    device: torch.device,
    repeats: int,
) -> dict[str, Timed]:
    """One PGD-`steps` call through robustcnn's `pgd` attack (ART underneath) on the batch `x` (B, C, H, W) in
    [0, 1], and its limit, `steps` x (forward + backward) of the same batch, timed in interleaved rounds after a
    warm-up of each. `model` is held as the sweep holds it (eval mode, frozen weights, channels-last)."""
    shape = tuple(x.shape[1:])
    target = Target(art_classifier(model, shape, num_classes, device), model, device, len(x), num_classes)
    params = PgdParams(steps=steps)

    def ours(_: int = 0) -> np.ndarray:
        attack = ATTACKS.get("pgd")("pgd-linf", Norm.LINF, params, target)
        return attack.generate(x, y, eps)

    x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def limit(_: int = 0) -> torch.Tensor:
        return limit_passes(model, x_t, y_t, steps)

    ours(), limit()  # warm-up
    return interleaved({"ours": ours, "limit": limit}, repeats, device)
