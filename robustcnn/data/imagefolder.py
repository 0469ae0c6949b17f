"""`imagefolder:PATH`: your own images, one folder per class.

Either PATH/train/<class>/* and PATH/test/<class>/*, or PATH/<class>/* which is split 80/20,
stratified and seeded. All images must share one size and be all greyscale or all colour: we do not
resize silently, because a resize changes what an eps means.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from robustcnn.data.base import DATASETS, DataOptions, DatasetInfo, Source, Split, stratified_split
from robustcnn.errors import UsageError
from robustcnn.threat import Norm, ThreatModel

_GREY_MODES = {"1", "L", "I", "I;16", "F"}
SPLIT_SEED = 0


@DATASETS.register("imagefolder")
class ImageFolderSource(Source):
    def info(self, options: DataOptions) -> DatasetInfo:
        root = _root(options)
        x, _, classes = _read_split(root, Split.TRAIN)
        pixels = x.float().div(255)
        return DatasetInfo(
            name=f"imagefolder:{root}",
            shape=tuple(x.shape[1:]),
            class_names=tuple(classes),
            mean=tuple(pixels.mean(dim=(0, 2, 3)).tolist()),
            std=tuple(pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()),
            threat_model=ThreatModel(Norm.LINF, 8 / 255),
            train_defaults={"epochs": 30, "batch_size": 64, "optimizer": "adam", "lr": 1e-3},
        )

    def load(self, split: Split, options: DataOptions) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = _read_split(_root(options), split)
        return x, y


def _root(options: DataOptions) -> Path:
    if not options.argument:
        raise UsageError("dataset 'imagefolder' needs a path: write imagefolder:PATH")
    root = Path(options.argument).expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"imagefolder path {str(root)!r} is not a directory")
    return root


@lru_cache(maxsize=4)
def _read_split(root: Path, split: Split) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    splits, classes = _splits(root)
    files, labels = splits[split]
    return _decode(files), torch.tensor(labels, dtype=torch.long), classes


@lru_cache(maxsize=4)
def _splits(root: Path) -> tuple[dict[Split, tuple[list[Path], list[int]]], list[str]]:
    """Files and labels of both splits, indexed and checked once per folder, and the class names."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _index(root / "train"), _index(root / "test")
        if test[2] != train[2]:
            raise UsageError(f"{root}/test has classes {test[2]} but {root}/train has {train[2]}")
        _check_same_shape(train[0] + test[0])
        return {Split.TRAIN: train[:2], Split.TEST: test[:2]}, train[2]
    files, labels, classes = _index(root)
    _check_same_shape(files)
    what = f"imagefolder {root} (80/20 train/test split)"
    train, test = stratified_split(np.asarray(labels), test_size=0.2, seed=SPLIT_SEED, what=what, names=classes)
    pick = lambda keep: ([files[i] for i in keep], [labels[i] for i in keep])
    return {Split.TRAIN: pick(train), Split.TEST: pick(test)}, classes


def _index(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        files += found
        labels += [label] * len(found)
    if not files:
        raise UsageError(f"no images found under {folder}; expected {folder}/<class>/*.png (or .jpg, .bmp, ...)")
    if len(classes) < 2:
        raise UsageError(f"{folder} has {len(classes)} class folder(s); a classifier needs at least 2")
    return files, labels, classes


def _decode(files: list[Path]) -> torch.Tensor:
    """The pixels, (N, C, H, W) uint8; `_check_same_shape` has already made sure every image has one shape."""
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for path in files:
        try:  # a header can be fine while the pixel data after it is truncated
            with Image.open(path) as image:
                grey = image.mode in _GREY_MODES
                array = np.asarray(image.convert("L" if grey else "RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise UsageError(f"cannot read image {path}: {error}") from None
        arrays.append(array[None] if grey else array.transpose(2, 0, 1))  # (C, H, W)
    return torch.from_numpy(np.stack(arrays))


def _check_same_shape(files: list[Path]) -> None:
    """Size and colour mode of every image of both splits, from the headers (only float images are decoded,
    for NaN): one odd image fails before training starts, not when the test split is read after training."""
    from PIL import Image, UnidentifiedImageError

    first = None
    for path in files:
        try:
            with Image.open(path) as image:
                shape = (1 if image.mode in _GREY_MODES else 3, image.height, image.width)  # (C, H, W)
                if image.mode == "F":
                    _check_float_pixels(path, np.asarray(image))
        except (UnidentifiedImageError, OSError) as error:
            raise UsageError(f"cannot read image {path}: {error}") from None
        first = first or (path, shape)
        if shape != first[1]:
            raise _mismatch(path, shape, *first)


def _mismatch(path: Path, shape: tuple[int, ...], first: Path, first_shape: tuple[int, ...]) -> UsageError:
    return UsageError(
        f"image {path} is {_describe(shape)} but {first} is {_describe(first_shape)}; "
        "all images must have the same size and colour mode (resize them first)"
    )


def _check_float_pixels(path: Path, pixels: np.ndarray) -> None:
    """Pillow turns float images into 8 bits by clipping to 0..255: NaN, inf or values outside would change silently."""
    bad = pixels[~(np.isfinite(pixels) & (pixels >= 0) & (pixels <= 255))]
    if bad.size:
        raise UsageError(
            f"image {path} has pixel value {bad.flat[0].item()!r}; float images must hold finite values in 0..255 "
            "(or save it as an 8-bit PNG)"
        )


def _describe(shape: tuple[int, ...]) -> str:
    channels, height, width = shape
    return f"{width}x{height} {'greyscale' if channels == 1 else 'colour'}"
