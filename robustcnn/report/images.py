"""Images for the report as inline PNG data URIs, made with Pillow: the gallery and the optimised patches.

Both are optional: a missing or unreadable file gives a reason to show instead, never an exception.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_EXAMPLES = 8  # gallery examples shown per model: enough to see the perturbation, small enough to stay light
MAX_PATCH_SIDE = 128  # larger patches are shrunk: the report shows what the patch looks like, not its pixels


@dataclass(frozen=True)
class Example:
    clean: str  # data URI of the clean image
    adversarial: str  # data URI of the adversarial image
    perturbation: str  # data URI of (x_adv - x), magnified around mid-grey
    label: str  # true class name
    pred: str  # predicted class on the clean image
    pred_adv: str  # predicted class on the adversarial image
    fooled: bool  # the adversarial prediction is wrong


@dataclass(frozen=True)
class Gallery:
    attack: str  # the attack that made the examples
    eps: float  # its radius in [0, 1] pixel units
    magnify: float  # perturbation shown x this factor
    examples: list[Example]  # at most MAX_EXAMPLES; the page upscales them with crisp pixels


def png_uri(image: np.ndarray) -> str:
    """(H, W) or (H, W, 3) floats in [0, 1] -> "data:image/png;base64,..."."""
    pixels = np.clip(np.rint(np.nan_to_num(image) * 255), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB").save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _hwc(images: np.ndarray) -> np.ndarray:
    """(k, C, H, W) -> (k, H, W) for grey or (k, H, W, 3) for colour."""
    return images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)


def load_gallery(path: Path, class_names: list[str]) -> Gallery | str:
    """The gallery of one model, or a one-line reason why there is none."""
    if not path.is_file():
        return "not in this sweep"
    try:
        with np.load(path, allow_pickle=False) as data:  # never unpickle: the file could run code
            x, x_adv = data["x"].astype(np.float32), data["x_adv"].astype(np.float32)  # (k, C, H, W) in [0, 1]
            labels = {key: data[key].astype(np.int64) for key in ("y", "pred", "pred_adv")}  # (k,) each
            attack = str(data["attack"]) if "attack" in data else "?"
            eps = float(data["eps"]) if "eps" in data else math.nan
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as error:
        return f"{path.name} is unreadable ({type(error).__name__}: {error})"
    if (
        x.ndim != 4
        or x.shape != x_adv.shape
        or x.shape[1] not in (1, 3)
        or any(v.shape != (len(x),) for v in labels.values())
    ):
        return f"{path.name} has unexpected shapes: x {x.shape}, x_adv {x_adv.shape}, y {labels['y'].shape}"
    return _gallery(x[:MAX_EXAMPLES], x_adv[:MAX_EXAMPLES], labels, class_names, attack, eps)


def _gallery(x: np.ndarray, x_adv: np.ndarray, labels: dict, names: list[str], attack: str, eps: float) -> Gallery:
    delta = x_adv - x  # (k, C, H, W) in [-eps, eps]
    largest = float(np.abs(delta).max()) if delta.size else 0.0
    magnify = 0.5 / largest if largest > 0 else 1.0  # the largest change reaches black or white
    name = lambda i: names[i] if 0 <= i < len(names) else str(i)
    clean, adversarial, shown = _hwc(x), _hwc(x_adv), _hwc(0.5 + delta * magnify)
    examples = []
    for i in range(len(x)):
        y, pred, pred_adv = (int(labels[key][i]) for key in ("y", "pred", "pred_adv"))
        pictures = png_uri(clean[i]), png_uri(adversarial[i]), png_uri(shown[i])
        examples.append(Example(*pictures, name(y), name(pred), name(pred_adv), pred_adv != y))
    return Gallery(attack, eps, magnify, examples)


def patch_uri(path: Path) -> str | None:
    """The patch PNG as a data URI (shrunk if large), or None when it is missing or not an image."""
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a huge patch is skipped, not warned about
            with Image.open(path, formats=["PNG"]) as image:  # the sweep writes PNG: no other format's decoder runs
                image.load()
                if max(image.size) <= MAX_PATCH_SIDE:
                    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
                image.thumbnail((MAX_PATCH_SIDE, MAX_PATCH_SIDE))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
