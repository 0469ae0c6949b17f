"""patch: Brown et al. (2017), one universal targeted patch (ART `AdversarialPatchPyTorch`).

The patch is optimised on training images with random scale, rotation and position, then pasted on
held-out test images at each scale of the suite's grid. Rows report the accuracy under the patch and
the targeted success rate (test images of other classes classified as `target`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robustcnn.art_setup import import_art
from robustcnn.attacks.base import ATTACKS, PatchAttack
from robustcnn.config import COUNT, FLOAT, INT, option


def _shape(value) -> str:
    text = str(value)
    if text not in {"circle", "square"}:
        raise ValueError("choose one of: circle, square")
    return text


@dataclass(frozen=True)
class PatchParams:
    target: int = option(0, "class index the patch pushes images towards", COUNT)
    iterations: int = option(200, "optimisation steps", INT)
    learning_rate: float = option(0.1, "Adam step on patch pixels in [0, 1]", FLOAT)
    train_images: int = option(256, "training images the patch is optimised on", INT)
    rotation_max: float = option(22.5, "random rotation during training and evaluation, degrees", FLOAT)
    shape: str = option("square", "circle or square", _shape)


@ATTACKS.register("patch")
class AdversarialPatch(PatchAttack):
    Params = PatchParams

    def _art(self, scales: tuple[float, ...]):
        import_art()
        from art.attacks.evasion import AdversarialPatchPyTorch

        if getattr(self, "_attack", None) is None:
            p = self.params
            self._attack = AdversarialPatchPyTorch(
                self.target.classifier,
                rotation_max=p.rotation_max,
                scale_min=min(scales),
                scale_max=max(scales),
                learning_rate=p.learning_rate,
                max_iter=p.iterations,
                batch_size=self.target.batch_size,
                patch_shape=tuple(self.target.classifier.input_shape),
                patch_type=p.shape,
                optimizer="Adam",
                targeted=True,
                verbose=False,
            )
        return self._attack

    def train_patch(self, x: np.ndarray, y: np.ndarray, scales: tuple[float, ...]) -> np.ndarray:
        targets = np.full(len(x), self.params.target, dtype=np.int64)
        patch, _ = self._art(scales).generate(x, targets)
        return patch  # (C, H, W) in [0, 1]

    def apply(self, x: np.ndarray, scale: float, patch: np.ndarray, scales: tuple[float, ...]) -> np.ndarray:
        return self._art(scales).apply_patch(x, scale=scale, patch_external=patch)
