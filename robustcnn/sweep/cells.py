"""The work of one cell, as pure functions of (model, attack, images, eps, which examples to attack).

No files, no caching, no rows: each attack kind (kinds/) decides which examples each cell attacks, and
`ChainRunner` (chains.py) seeds it and keeps what it returns. So a cell computes the same in this process or in
any other (a Ray task, a shard).
Every function takes x (n, C, H, W) float32 in [0, 1] and y (n,) true labels and returns per-example flags:
True where the example is still classified correctly.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from robustcnn.attacks import Target
from robustcnn.console import progress


def predict(target: Target, x: np.ndarray) -> np.ndarray:
    """Predicted classes for x, in batches on the target's device."""
    out = []
    with torch.no_grad():
        for start in range(0, len(x), target.batch_size):
            batch = torch.from_numpy(x[start : start + target.batch_size]).to(target.device)
            out.append(target.model(batch).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def in_batches(generate, x: np.ndarray, y: np.ndarray, batch_size: int, desc: str) -> np.ndarray:
    """Runs an attack batch by batch so progress shows and Ctrl-C lands between batches."""
    x_adv = np.empty_like(x)
    for start in progress(range(0, len(x), batch_size), desc=desc, unit="batch"):
        stop = start + batch_size
        x_adv[start:stop] = generate(x[start:stop], y[start:stop])
    return x_adv


def clean(target: Target, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return predict(target, x) == y


def bounded(attack, target: Target, x: np.ndarray, y: np.ndarray, todo: np.ndarray, eps: float) -> np.ndarray:
    """One eps: the examples in `todo` are attacked; every other example counts as not robust."""
    robust = np.zeros(len(x), dtype=bool)
    index = np.flatnonzero(todo)
    if len(index):
        generate = lambda xb, yb: attack.generate(xb, yb, eps)  # noqa: E731
        x_adv = in_batches(generate, x[index], y[index], target.batch_size, f"{attack.name} eps={eps:.4g}")
        robust[index] = predict(target, x_adv) == y[index]
    return robust


def certified(bound, target: Target, x: np.ndarray, y: np.ndarray, todo: np.ndarray, eps: float) -> np.ndarray:
    """One eps: True where the prediction is proven correct over the whole ball; only `todo` is tried."""
    proven = np.zeros(len(x), dtype=bool)
    index = np.flatnonzero(todo)
    if len(index):
        proven[index] = bound.certify(x[index], y[index], eps)
    return proven


def smoothed(certificate, x: np.ndarray, y: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray]:
    """Every image, clean-correct or not (the smoothed classifier is another classifier): (flags (len(grid), n)
    where it is right and certified to each radius, the radius of each, 0 where it abstains or is wrong)."""
    from robustcnn.attacks.smoothing import smoothing_flags

    prediction, radius = certificate.certify(x, y)
    return smoothing_flags(prediction, radius, y, grid), np.where(prediction == y, radius, 0.0)


def minimal(attack, target: Target, x: np.ndarray, y: np.ndarray, correct: np.ndarray, grid) -> tuple:
    """One run answers every eps: (flags (len(grid), n), the distance each example needed, inf if none)."""
    index = np.flatnonzero(correct)
    distance = np.full(len(x), np.inf)
    if len(index):
        x_adv = in_batches(attack.generate, x[index], y[index], target.batch_size, attack.name)
        fooled = predict(target, x_adv) != y[index]
        order = np.inf if attack.norm.art == math.inf else 2
        norms = np.linalg.norm((x_adv - x[index]).reshape(len(index), -1), ord=order, axis=1)
        distance[index] = np.where(fooled, norms, np.inf)
    flags = np.stack([correct & (distance > eps * (1 + 1e-6)) for eps in grid])
    return flags, distance


def patch(attack, target: Target, x, y, x_train, y_train, scales, goal: int) -> tuple:
    """The patch trained on (x_train, y_train), pasted on x at every scale: (flags, target success per scale, patch)."""
    trained = attack.train_patch(x_train, y_train, scales)
    flags, success = [], []
    others = y != goal
    for scale in scales:
        predicted = predict(target, attack.apply(x, scale, trained, scales))
        flags.append(predicted == y)
        success.append(float((predicted[others] == goal).mean()) if others.any() else math.nan)
    return np.stack(flags), success, trained.astype(np.float32)


def probe(attack, target: Target, x: np.ndarray, y: np.ndarray, grid) -> np.ndarray:
    """Every example attacked afresh at every eps, correct or not: (len(grid), n) flags.

    Nesting makes curves non-increasing and robust <= clean by construction; this is what the checks
    that look for a failing attack (a step size wrong at some eps, a model random at test time) read.
    """
    everyone = np.ones(len(x), dtype=bool)
    return np.stack([bounded(attack, target, x, y, everyone, eps) for eps in grid])
