"""The work of one cell, as pure functions of (model, attack, images, eps, which examples to attack).

No files, no caching, no rows: each attack kind (kinds/) decides which examples each cell attacks, and
`ChainRunner` (chains.py) seeds it and keeps what it returns. So a cell computes the same in this process or in
any other (a Ray task, a shard).
Every function takes the model's test images as `Examples` and works batch by batch: a batch of indices is
converted to float, attacked and predicted, and only per-example flags, distances or radii are kept for the whole
set (never a float copy of it). It returns per-example flags: True where the example is still classified correctly
(by a model random at test time: in a majority of `Target.draws` passes).
Random starts are drawn per example (`Starts`), so the flags do not depend on the batch size, and a batch redone
smaller after running out of GPU memory (`Batches`) gives the same flags.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from robustcnn.attacks import Target
from robustcnn.attacks.art import Starts
from robustcnn.data import ImageSet
from robustcnn.sweep.batching import Batches


@dataclass(frozen=True)
class Examples:
    """A model's n test images as cells read them: kept as the ImageSet holds them (uint8 for 8-bit data),
    converted to float one batch at a time, with the model's batch size."""

    images: ImageSet  # the n test images; an example's identity is its place here
    batches: Batches  # the model's batch size, halved when a batch runs out of GPU memory

    def __len__(self) -> int:
        return len(self.images)

    @property
    def y(self) -> np.ndarray:
        return self.images.y.numpy()  # (n,) true labels, a view

    def x(self, index: np.ndarray) -> np.ndarray:
        """(len(index), C, H, W) float32 in [0, 1]: a new array, which attacks may change."""
        return self.images.images(torch.from_numpy(np.asarray(index, dtype=np.int64))).numpy()

    def first(self, size: int) -> Examples:
        return Examples(self.images.subset(np.arange(size)), self.batches)


Keep = Callable[[np.ndarray, np.ndarray], None]  # (example ids of a batch, their x_adv (len, C, H, W))


def start_seed() -> int:
    """The seed of the cell's random starts: the one `ChainRunner.cell` gave torch (`seed_all`), read without
    drawing from any generator, so every other random number of the cell is what it was before starts per example."""
    return torch.initial_seed()


def predict(target: Target, x: np.ndarray) -> np.ndarray:
    """Predicted classes for a few images in memory (the gallery), in batches of the target's batch size; a random
    model's: the class most of its passes predict."""
    size = target.batch_size
    out = [target.labels(x[start : start + size]) for start in range(0, len(x), size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def in_batches(work: Callable[[np.ndarray], None], index: np.ndarray, batches: Batches, desc: str) -> None:
    """work(part) for consecutive parts of `index` (example ids), a batch at a time, so progress shows, Ctrl-C lands
    between batches, and a batch out of GPU memory is redone smaller."""
    batches.run(len(index), lambda start, stop: work(index[start:stop]), desc)


def clean(target: Target, examples: Examples) -> np.ndarray:
    """(n,) True where the model classifies the image correctly."""
    correct = np.zeros(len(examples), dtype=bool)
    y = examples.y

    def work(part: np.ndarray) -> None:
        correct[part] = target.correct(examples.x(part), y[part])

    in_batches(work, np.arange(len(examples)), examples.batches, "clean")
    return correct


def bounded(
    attack, target: Target, examples: Examples, todo: np.ndarray, eps: float, keep: Keep | None = None
) -> np.ndarray:
    """One eps: the examples in `todo` are attacked; every other example counts as not robust. `keep(part, x_adv)`
    sees each batch's adversarial examples (the gallery takes a few from there rather than attack them again)."""
    robust = np.zeros(len(examples), dtype=bool)
    index = np.flatnonzero(todo)
    if len(index):
        y, seed = examples.y, start_seed()

        def work(part: np.ndarray) -> None:
            x_adv = attack.generate(examples.x(part), y[part], eps, starts=Starts(seed, part))
            robust[part] = target.correct(x_adv, y[part])
            if keep is not None:
                keep(part, x_adv)

        in_batches(work, index, examples.batches, f"{attack.name} eps={eps:.4g}")
    return robust


def certified(bound, target: Target, examples: Examples, todo: np.ndarray, eps: float) -> np.ndarray:
    """One eps: True where the prediction is proven correct over the whole ball; only `todo` is tried."""
    proven = np.zeros(len(examples), dtype=bool)
    index = np.flatnonzero(todo)
    y = examples.y

    def work(part: np.ndarray) -> None:
        proven[part] = bound.certify(examples.x(part), y[part], eps)

    if len(index):
        in_batches(work, index, examples.batches, f"{bound.name} eps={eps:.4g}")
    return proven


def smoothed(certificate, examples: Examples, grid) -> tuple[np.ndarray, np.ndarray]:
    """Every image, clean-correct or not (the smoothed classifier is another classifier): (flags (len(grid), n)
    where it is right and certified to each radius, the radius of each, 0 where it abstains or is wrong).
    ART certifies image by image, drawing its noise in order: batches change no number."""
    from robustcnn.attacks.smoothing import smoothing_flags

    y = examples.y
    prediction, radius = np.zeros(len(y), dtype=np.int64), np.zeros(len(y))

    def work(part: np.ndarray) -> None:
        prediction[part], radius[part] = certificate.certify(examples.x(part), y[part])

    in_batches(work, np.arange(len(y)), examples.batches, certificate.name)
    return smoothing_flags(prediction, radius, y, grid), np.where(prediction == y, radius, 0.0)


def minimal(attack, target: Target, examples: Examples, correct: np.ndarray, grid) -> tuple:
    """One run answers every eps: (flags (len(grid), n), the distance each example needed, inf if none)."""
    index = np.flatnonzero(correct)
    distance = np.full(len(examples), np.inf)
    y = examples.y
    order = np.inf if attack.norm.art == math.inf else 2

    def work(part: np.ndarray) -> None:
        x = examples.x(part)
        x_adv = attack.generate(x, y[part])
        fooled = ~target.correct(x_adv, y[part])
        norms = np.linalg.norm((x_adv - x).reshape(len(part), -1), ord=order, axis=1)
        distance[part] = np.where(fooled, norms, np.inf)

    if len(index):
        in_batches(work, index, examples.batches, attack.name)
    flags = np.stack([correct & (distance > eps * (1 + 1e-6)) for eps in grid])
    return flags, distance


def patch(attack, target: Target, examples: Examples, x_train, y_train, scales, goal: int) -> tuple:
    """The patch trained on (x_train, y_train), pasted on every image at every scale: (flags, target success per
    scale, patch). ART places the patch image by image, drawing in order: batches change no number."""
    trained = attack.train_patch(x_train, y_train, scales)
    y = examples.y
    flags, success = [], []
    others = y != goal
    for scale in scales:
        right, hit = np.zeros(len(y), dtype=bool), np.zeros(len(y), dtype=bool)

        def work(part: np.ndarray, scale=scale, right=right, hit=hit) -> None:
            votes = target.votes(attack.apply(examples.x(part), scale, trained, scales))
            right[part], hit[part] = target.majority(votes, y[part]), target.majority(votes, goal)

        in_batches(work, np.arange(len(y)), examples.batches, f"{attack.name} scale={scale:g}")
        flags.append(right)
        success.append(float(hit[others].mean()) if others.any() else math.nan)
    return np.stack(flags), success, trained.astype(np.float32)


def probe(attack, target: Target, examples: Examples, grid) -> np.ndarray:
    """Every example attacked afresh at every eps, correct or not: (len(grid), n) flags.

    Nesting makes curves non-increasing and robust <= clean by construction; this is what the checks
    that look for a failing attack (a step size wrong at some eps, a model random at test time) read.
    """
    everyone = np.ones(len(examples), dtype=bool)
    return np.stack([bounded(attack, target, examples, everyone, eps) for eps in grid])
