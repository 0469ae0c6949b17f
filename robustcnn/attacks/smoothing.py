"""smoothing: randomized smoothing (Cohen et al. 2019) through ART's PyTorchRandomizedSmoothing, as a suite entry.

It certifies another classifier than the one the attacks test: the smoothed g(x) = the class the model
predicts most often on x + N(0, sigma^2 I). Per image, `selection` noisy samples pick g's class, `samples`
fresh ones bound its probability p from below (Clopper-Pearson at level 1 - alpha), and g provably keeps that
class within L2 radius sigma * Phi^-1(p) (g abstains when p < 1/2). A row at radius r counts the images with
g correct and radius >= r; each holds with probability at least 1 - alpha. Only a model trained on that noise
(`--adv-method gaussian --sigma`) makes g accurate: the report warns otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from robustcnn.art_setup import import_art
from robustcnn.attacks.art import pin_device
from robustcnn.attacks.base import ATTACKS, Attack
from robustcnn.config import FLOAT, INT, option
from robustcnn.console import progress
from robustcnn.threat import Norm

IMAGES_PER_CALL = 10  # ART certifies image by image; progress and Ctrl-C between groups of this many


def _failure_probability(value: object) -> float:
    number = float(value)
    if not 0 < number < 0.5:
        raise ValueError(f"expected a probability in (0, 0.5), e.g. 0.001, got {value!r}")
    return number


@dataclass(frozen=True)
class SmoothingParams:
    sigma: float = option(0.25, "standard deviation of the noise, pixels in [0, 1]: the model's --sigma", FLOAT)
    samples: int = option(1000, "noise samples per image for the certificate (Cohen et al. use 100000)", INT)
    selection: int = option(100, "noise samples per image that choose the class first", INT)
    alpha: float = option(0.001, "probability that one image's certificate is wrong", _failure_probability)
    batch: int = option(1000, "noisy images per forward pass", INT)


@ATTACKS.register("smoothing")
class Smoothing(Attack):
    """Not an attack: certified L2 radii of the smoothed classifier (rows of kind "smoothed")."""

    kind = "smoothed"
    box = "black"  # predictions only
    norms = (Norm.L2,)
    Params = SmoothingParams

    def certify(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(smoothed prediction, -1 where it abstains; certified L2 radius, 0 where it abstains) per image."""
        smoothed = self._smoothed(x.shape[1:])
        predictions, radii = [], []
        for start in progress(range(0, len(x), IMAGES_PER_CALL), desc=f"{self.name} (n={self.params.samples})",
                              unit="batch"):  # fmt: skip
            prediction, radius = smoothed.certify(
                x[start : start + IMAGES_PER_CALL], n=self.params.samples, batch_size=self.params.batch
            )
            predictions.append(prediction.astype(np.int64))
            radii.append(radius.astype(np.float64))
        empty = np.zeros(0)
        return np.concatenate(predictions or [empty]).astype(np.int64), np.concatenate(radii or [empty])

    def _smoothed(self, shape: tuple[int, ...]):
        import_art()
        from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

        p = self.params
        smoothed = PyTorchRandomizedSmoothing(
            model=self.target.model, loss=nn.CrossEntropyLoss(), input_shape=tuple(shape),
            nb_classes=self.target.num_classes, clip_values=(0.0, 1.0),
            device_type="gpu" if self.target.device.type == "cuda" else "cpu",
            sample_size=p.selection, scale=p.sigma, alpha=p.alpha,
        )  # fmt: skip
        return pin_device(smoothed, self.target.model, self.target.device)  # ART's "gpu" is cuda:0; ours may not be


def smoothing_flags(prediction: np.ndarray, radius: np.ndarray, y: np.ndarray, grid) -> np.ndarray:
    """(len(grid), n): the smoothed classifier is right and certified at least to each radius."""
    right = prediction == y
    return np.stack([right & (radius >= r) for r in grid]) if len(grid) else np.zeros((0, len(y)), dtype=bool)
