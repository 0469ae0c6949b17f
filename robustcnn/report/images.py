"""Images for the report as inline data URIs, made with Pillow: the gallery and the optimised patches.

Both are optional: a missing or unreadable file gives a reason to show instead, never an exception. A model's
gallery is one picture (a contact sheet: clean, adversarial and perturbation as three rows, one column per
example), not three per example: one image header instead of 24, and the compressor sees every example at
once. Pictures are lossless WebP where Pillow has it (smaller than PNG for the same pixels; every current
browser shows it), else PNG.
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
from PIL import Image, UnidentifiedImageError, features

MAX_EXAMPLES = 8  # gallery examples shown per model: enough to see the perturbation, small enough to stay light
PAGE_EXAMPLES = 48  # ... and on the whole page: with many models each shows fewer (never under MIN_EXAMPLES), since
# a sheet of CIFAR-like images barely compresses (~9 KB per example) and 20 models x 8 made a 1.6 MB page
MIN_EXAMPLES = 2
MAX_PATCH_SIDE = 128  # larger patches are shrunk: the report shows what the patch looks like, not its pixels
GAP = 1  # pixels of white between the examples of a contact sheet (3 CSS pixels once the page scales it up)
WEBP = features.check("webp")  # Pillow built with libwebp (its wheels are): lossless WebP, else PNG


@dataclass(frozen=True)
class Example:
    label: str  # true class name
    pred: str  # predicted class on the clean image
    pred_adv: str  # predicted class on the adversarial image
    fooled: bool  # the adversarial prediction is wrong


@dataclass(frozen=True)
class Gallery:
    attack: str  # the attack that made the examples
    eps: float  # its radius in [0, 1] pixel units
    magnify: float  # perturbation shown x this factor
    examples: list[Example]  # at most MAX_EXAMPLES, in the sheet's column order
    sheet: str  # data URI of the contact sheet: rows clean, adversarial, perturbation; one column per example
    saved: int  # examples in the model's gallery file (the page may show fewer: `examples_per_model`)


def examples_per_model(models: int) -> int:
    """Gallery examples shown per model on a page of `models` models: MAX_EXAMPLES up to 6 models, then fewer."""
    return max(MIN_EXAMPLES, min(MAX_EXAMPLES, PAGE_EXAMPLES // max(models, 1)))


def image_uri(image: np.ndarray) -> str:
    """(H, W) or (H, W, 3) floats in [0, 1] -> a lossless "data:image/webp;base64,..." (or PNG)."""
    pixels = np.clip(np.rint(np.nan_to_num(image) * 255), 0, 255).astype(np.uint8)
    return _uri(Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB"))


def _uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    if WEBP:
        image.save(buffer, format="WEBP", lossless=True, method=4)  # method 6: hardly smaller, far slower
    else:
        image.save(buffer, format="PNG", optimize=True)
    kind = "webp" if WEBP else "png"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def contact_sheet(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of (k, H, W[, 3]) images in [0, 1] -> one (rows * (H + GAP) - GAP, k * (W + GAP) - GAP[, 3]) image,
    white between the examples."""
    k, h, w = rows[0].shape[:3]
    sheet = np.ones((len(rows) * (h + GAP) - GAP, k * (w + GAP) - GAP, *rows[0].shape[3:]), dtype=np.float32)
    for r, images in enumerate(rows):
        for i, image in enumerate(images):
            sheet[r * (h + GAP) : r * (h + GAP) + h, i * (w + GAP) : i * (w + GAP) + w] = image
    return sheet


def _hwc(images: np.ndarray) -> np.ndarray:
    """(k, C, H, W) -> (k, H, W) for grey or (k, H, W, 3) for colour."""
    return images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)


def load_gallery(path: Path, class_names: list[str], shown: int = MAX_EXAMPLES) -> Gallery | str:
    """The gallery of one model (its first `shown` examples), or a one-line reason why there is none."""
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
    return _gallery(x[:shown], x_adv[:shown], labels, class_names, attack, eps, saved=len(x))


def _gallery(
    x: np.ndarray, x_adv: np.ndarray, labels: dict, names: list[str], attack: str, eps: float, saved: int
) -> Gallery:
    delta = x_adv - x  # (k, C, H, W) in [-eps, eps]
    largest = float(np.abs(delta).max()) if delta.size else 0.0
    magnify = 0.5 / largest if largest > 0 else 1.0  # the largest change reaches black or white
    name = lambda i: names[i] if 0 <= i < len(names) else str(i)
    examples = []
    for i in range(len(x)):
        y, pred, pred_adv = (int(labels[key][i]) for key in ("y", "pred", "pred_adv"))
        examples.append(Example(name(y), name(pred), name(pred_adv), pred_adv != y))
    if not examples:
        return Gallery(attack, eps, magnify, [], "", saved)
    sheet = contact_sheet([_hwc(x), _hwc(x_adv), _hwc(0.5 + delta * magnify)])
    return Gallery(attack, eps, magnify, examples, image_uri(sheet), saved)


def patch_uri(path: Path) -> str | None:
    """The patch PNG as a data URI (shrunk if large; the smaller of the file and its lossless WebP), or None
    when it is missing or not an image."""
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a huge patch is skipped, not warned about
            with Image.open(path, formats=["PNG"]) as image:  # the sweep writes PNG: no other format's decoder runs
                image.load()
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
                small = max(image.size) <= MAX_PATCH_SIDE
                image.thumbnail((MAX_PATCH_SIDE, MAX_PATCH_SIDE))
                encoded = _uri(image)
                original = _png_file_uri(path) if small else ""
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    return original if original and len(original) <= len(encoded) else encoded


def _png_file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
