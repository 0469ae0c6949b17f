"""ART's Square attack (`SquareAttack`) with one forward pass per query step: ART's results for the same seed.

Each of ART's iterations runs the model three times: on every example of the batch (which are still correct), on the
survivors (their current margin) and on the survivors' candidates (the query). The first two are known already: an
example's current point is its last accepted candidate, whose logits the query that proposed it computed. Here the
logits of every current point are kept, so each iteration is one forward pass of the surviving examples' candidates,
through the model directly (ART's `predict` also builds a DataLoader that indexes the batch image by image). The
squares, signs and arithmetic are ART's code in ART's order, drawing from the same generators (numpy's and Python's
global ones), so a seed gives ART's squares and ART's result. tests/test_lean_attacks.py compares the two.

That reuse assumes a model computes an example's logits the same whichever other examples share its batch, as
PyTorch's CPU kernels do from MIN_ROWS (12) examples on (tested on smallcnn); a smaller batch is run again where ART
runs it, as ART does. Where a device picks its kernels otherwise (GPUs), a near tie between two margins can resolve
otherwise than in ART, giving another, equally valid, attack path.

Lean where it applies: a PyTorch classifier robustcnn has not wrapped (EOT), ART's default loss and criterion,
channels-first images, Linf or L2; otherwise ART's own `generate` runs.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import torch

from robustcnn.art_setup import import_art
from robustcnn.attacks.lean_apgd import MIN_ROWS


@functools.cache
def square_class() -> type:
    import_art()
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import PyTorchClassifier

    class LeanSquare(SquareAttack):
        def __init__(self, estimator, **settings):
            super().__init__(estimator, **settings)
            self.default_criteria = settings.get("adv_criterion") is None and settings.get("loss") is None

        def is_lean(self) -> bool:
            estimator = self.estimator
            return (
                isinstance(estimator, PyTorchClassifier)
                and self.default_criteria
                and "predict" not in estimator.__dict__
                and not estimator.preprocessing_operations
                and not estimator.postprocessing_defences
                and estimator.channels_first
                and self.norm in (np.inf, "inf", 2)
            )

        def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
            if y is None or x.ndim != 4 or not self.is_lean():
                return super().generate(x, y, **kwargs)
            return _generate(self, x, y)

    return LeanSquare


def _generate(attack, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ART's `generate` (restarts, then max_iter query steps), each step one forward pass of the survivors."""
    import_art()
    from art.config import ART_NUMPY_DTYPE
    from art.utils import check_and_transform_label_format

    y = check_and_transform_label_format(y, nb_classes=attack.estimator.nb_classes)
    x_adv = x.astype(ART_NUMPY_DTYPE)
    logits = _Forward(attack)
    clean = logits(x)
    current = clean.copy()  # (n, classes) the logits of each example's point in x_adv
    margins = _margin(current, y)  # (n,) ART's loss of each example's point in x_adv
    start, propose = (_linf_start, _linf_query) if attack.norm in (np.inf, "inf") else (_l2_start, _l2_query)
    for _ in range(attack.nb_restarts):
        sample_is_robust = np.logical_not(_fooled(_judged(current, x_adv, logits), y))
        if np.sum(sample_is_robust) == 0:
            break
        x_robust, y_robust = x[sample_is_robust], y[sample_is_robust]
        x_robust_new = start(attack, x_robust)
        current[sample_is_robust] = clean[sample_is_robust]  # a restart starts from x
        margins[sample_is_robust] = _margin(_judged(clean[sample_is_robust], x_robust, logits), y_robust)
        _accept(x_adv, (current, margins), sample_is_robust, x_robust, y_robust, x_robust_new, logits)
        for i_iter in range(attack.max_iter):
            sample_is_robust = np.logical_not(_fooled(_judged(current, x_adv, logits), y))
            if np.sum(sample_is_robust) == 0:
                break
            x_robust, x_init, y_robust = x_adv[sample_is_robust], x[sample_is_robust], y[sample_is_robust]
            if len(x_robust) < MIN_ROWS:
                margins[sample_is_robust] = _margin(logits(x_robust), y_robust)
            with np.errstate(divide="ignore", invalid="ignore"):  # ART's L2 tiles divide by zero norms (then unused)
                x_robust_new = propose(attack, x_robust, x_init, attack._get_percentage_of_elements(i_iter))
            _accept(x_adv, (current, margins), sample_is_robust, x_robust, y_robust, x_robust_new, logits)
    return x_adv


def _judged(known: np.ndarray, x: np.ndarray, logits) -> np.ndarray:
    """The logits ART would compute for x in one call: those known, unless x is a batch small enough for PyTorch's
    kernels to round otherwise than in the batch they came from (MIN_ROWS): then computed again, as ART does."""
    return known if len(x) >= MIN_ROWS else logits(x)


def _accept(x_adv, known, rows, x_robust, y_robust, x_robust_new, logits) -> None:
    """One query: the candidates replace the points whose margin they lower (ART's rule); `known` (the logits and
    margins of every example's point) follows."""
    current, margins = known
    logits_new = logits(x_robust_new)
    margins_new = _margin(logits_new, y_robust)
    loss_improved = (margins_new - margins[rows]) < 0.0
    x_robust[loss_improved] = x_robust_new[loss_improved]
    x_adv[rows] = x_robust
    changed = np.flatnonzero(rows)[loss_improved]
    current[changed], margins[changed] = logits_new[loss_improved], margins_new[loss_improved]


def _fooled(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ART's default criterion: the predicted class is not y's."""
    return np.argmax(logits, axis=1) != np.argmax(y, axis=1)


def _margin(y_pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ART's default loss (`_get_logits_diff`) from logits already computed: z_y - the second-largest logit."""
    logit_correct = np.take_along_axis(y_pred, np.expand_dims(np.argmax(y, axis=1), axis=1), axis=1)
    logit_highest_incorrect = np.take_along_axis(y_pred, np.expand_dims(np.argsort(y_pred, axis=1)[:, -2], axis=1), 1)
    return (logit_correct - logit_highest_incorrect)[:, 0]


class _Forward:
    """The model's logits of images in memory, as ART's `predict` computes them (float32, eval mode, no gradient),
    in batches of the attack's batch size, without ART's DataLoader."""

    def __init__(self, attack):
        self.estimator, self.batch_size = attack.estimator, attack.batch_size
        self.modules = list(self.estimator.model.modules())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if any(module.training for module in self.modules):
            self.estimator.model.eval()
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        device, out = self.estimator._device, []
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                batch = x[start : start + self.batch_size].to(device)
                out.append(self.estimator._model(batch)[-1].cpu().numpy().astype(np.float32))
        return np.concatenate(out)


# --- ART's squares, its draws and its arithmetic (square_attack.py, channels first) ---------------------------------
def _linf_start(attack, x_robust: np.ndarray) -> np.ndarray:
    import_art()
    from art.config import ART_NUMPY_DTYPE

    size = (x_robust.shape[0], x_robust.shape[1], 1, x_robust.shape[3])  # vertical stripes
    low, high = attack.estimator.clip_values
    stripes = x_robust + attack.eps * np.random.choice([-1, 1], size=size)
    return np.clip(stripes, a_min=low, a_max=high).astype(ART_NUMPY_DTYPE)


def _linf_query(attack, x_robust: np.ndarray, x_init: np.ndarray, percentage_of_elements: float) -> np.ndarray:
    import_art()
    from art.config import ART_NUMPY_DTYPE

    channels, height, width = x_robust.shape[1:]
    eps = attack.eps
    height_tile = max(int(round(math.sqrt(percentage_of_elements * height * width))), 1)
    tile = _random_tile(height, width, height_tile)  # drawn before the signs, as in ART
    delta_new = np.zeros((1, *attack.estimator.input_shape))  # ART's (C, H, W), with a batch axis for the tile
    delta_new[tile] = np.random.choice([-2 * eps, 2 * eps], size=[channels, 1, 1])
    delta_new = delta_new[0]
    x_robust_new = np.minimum(np.maximum(x_robust + delta_new, x_init - eps), x_init + eps)
    low, high = attack.estimator.clip_values
    return np.clip(x_robust_new, a_min=low, a_max=high).astype(ART_NUMPY_DTYPE)


def _l2_tile(height: int) -> np.ndarray:
    """ART's `_get_perturbation`: a tile of two opposite Gaussian-like bumps, randomly transposed and negated."""
    delta = np.zeros([height, height])
    gaussian_perturbation = np.zeros([height // 2, height])
    x_c, y_c = height // 4, height // 2
    for i_y in range(y_c):
        gaussian_perturbation[
            max(x_c, 0) : min(x_c + (2 * i_y + 1), height // 2), max(0, y_c) : min(y_c + (2 * i_y + 1), height)
        ] += 1.0 / ((i_y + 1) ** 2)
        x_c -= 1
        y_c -= 1
    gaussian_perturbation /= np.sqrt(np.sum(gaussian_perturbation**2))
    delta[: height // 2] = gaussian_perturbation
    delta[height // 2 : height // 2 + gaussian_perturbation.shape[0]] = -gaussian_perturbation
    delta /= np.sqrt(np.sum(delta**2))
    if random.random() > 0.5:
        delta = np.transpose(delta)
    if random.random() > 0.5:
        delta = -delta
    return delta


def _l2_start(attack, x_robust: np.ndarray) -> np.ndarray:
    import_art()
    from art.config import ART_NUMPY_DTYPE

    n_tiles = 5
    channels, height = x_robust.shape[1], x_robust.shape[2]
    height_tile = height // n_tiles
    delta_init = np.zeros(x_robust.shape, dtype=ART_NUMPY_DTYPE)
    height_start = 0
    for _ in range(n_tiles):
        width_start = 0
        for _ in range(n_tiles):
            perturbation = _l2_tile(height_tile).reshape((1, 1, height_tile, height_tile)) * np.random.choice(
                [-1, 1], size=(x_robust.shape[0], channels, 1, 1)
            )
            delta_init[:, :, height_start : height_start + height_tile, width_start : width_start + height_tile] += (
                perturbation
            )
            width_start += height_tile
        height_start += height_tile
    low, high = attack.estimator.clip_values
    scaled = delta_init / np.sqrt(np.sum(delta_init**2, axis=(1, 2, 3), keepdims=True)) * attack.eps
    return np.clip(x_robust + scaled, low, high)


def _random_tile(height: int, width: int, side: int) -> tuple[slice, ...]:
    """ART's draw of a square's place (its top row, then its left column) as an index of (n, C, H, W) arrays."""
    top = np.random.randint(0, height - side)
    left = np.random.randint(0, width - side)
    return (slice(None), slice(None), slice(top, top + side), slice(left, left + side))


def _l2_query(attack, x_robust: np.ndarray, x_init: np.ndarray, percentage_of_elements: float) -> np.ndarray:
    channels, height, width = x_robust.shape[1:]
    eps = attack.eps
    delta_x_robust_init = x_robust - x_init
    height_tile = max(int(round(math.sqrt(percentage_of_elements * height * width))), 3)
    if height_tile % 2 == 0:
        height_tile += 1
    height_tile_2 = height_tile
    tile = _random_tile(height, width, height_tile)
    new_deltas_mask = np.zeros(x_init.shape)
    new_deltas_mask[tile] = 1.0
    w_1_norm = np.sqrt(np.sum(delta_x_robust_init[tile] ** 2, axis=(2, 3), keepdims=True))
    tile_2 = _random_tile(height, width, height_tile_2)
    new_deltas_mask_2 = np.zeros(x_init.shape)
    new_deltas_mask_2[tile_2] = 1.0
    norms_x_robust = np.sqrt(np.sum((x_robust - x_init) ** 2, axis=(1, 2, 3), keepdims=True))
    w_norm = np.sqrt(
        np.sum(
            (delta_x_robust_init * np.maximum(new_deltas_mask, new_deltas_mask_2)) ** 2, axis=(1, 2, 3), keepdims=True
        )
    )
    delta_new = (
        np.ones([x_init.shape[0], channels, height_tile, height_tile])
        * _l2_tile(height_tile).reshape((1, 1, height_tile, height_tile))
        * np.random.choice([-1, 1], size=[x_init.shape[0], channels, 1, 1])
    )
    delta_new += delta_x_robust_init[tile] / (np.maximum(1e-9, w_1_norm))
    diff_norm = (eps * np.ones(delta_new.shape)) ** 2 - norms_x_robust**2
    diff_norm[diff_norm < 0.0] = 0.0
    delta_new /= np.sqrt(np.sum(delta_new**2, axis=(2, 3), keepdims=True)) * np.sqrt(diff_norm / channels + w_norm**2)
    delta_x_robust_init[tile_2] = 0.0
    delta_x_robust_init[tile] = delta_new
    low, high = attack.estimator.clip_values
    return np.clip(
        x_init + eps * delta_x_robust_init / np.sqrt(np.sum(delta_x_robust_init**2, axis=(1, 2, 3), keepdims=True)),
        low,
        high,
    )
