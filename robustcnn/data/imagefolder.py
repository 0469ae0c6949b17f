"""`imagefolder:PATH`: your own images, one folder per class.

Either PATH/train/<class>/* and PATH/test/<class>/*, or PATH/<class>/* which is split 80/20,
stratified and seeded. All images must share one size and be all greyscale or all colour: we do not
resize silently, because a resize changes what an eps means.

Images are found by extension (EXTENSIONS) and opened only as the formats those extensions name: a file of
another format, such as PostScript that Pillow would hand to Ghostscript, is refused rather than decoded. These
are refused too, each with one line naming the file, from the headers before any image is decoded: a path that
is not a regular file (a named pipe would block the read forever), a link that leads outside PATH, an image of
more than MAX_IMAGE_PIXELS pixels (Pillow's own decompression-bomb limits are higher), and a folder whose images
together would take more than MAX_DATA_BYTES in memory.
"""

from __future__ import annotations

import math
import stat
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from robustcnn.data.base import DATASETS, DataOptions, DatasetInfo, Source, Split, check_data_bytes, stratified_split
from robustcnn.errors import UsageError
from robustcnn.threat import Norm, ThreatModel

if TYPE_CHECKING:
    from PIL import Image

_GREY_MODES = {"1", "L", "I", "I;16", "F"}
SPLIT_SEED = 0
EXTENSIONS = {  # the file extensions read (torchvision's list), each with the Pillow format it names
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".ppm": "PPM", ".pgm": "PPM",
    ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
}  # fmt: skip
# Any of them for any extension: a JPEG saved as .png is common and harmless; a format outside this list is not.
FORMATS = tuple(sorted(set(EXTENSIONS.values())))
_FILE_KINDS = {  # what a path that is not a regular file is, for the error message
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}
MAX_IMAGE_PIXELS = 1 << 24  # 4096x4096: far above CNN inputs (224x224 is 50176), 48 MiB as RGB; Pillow warns at 89M


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
        train, test = _index(root / "train", root), _index(root / "test", root)
        if test[2] != train[2]:
            raise UsageError(f"{root}/test has classes {test[2]} but {root}/train has {train[2]}")
        _check_same_shape(root, train[0] + test[0])
        return {Split.TRAIN: train[:2], Split.TEST: test[:2]}, train[2]
    files, labels, classes = _index(root, root)
    _check_same_shape(root, files)
    what = f"imagefolder {root} (80/20 train/test split)"
    train, test = stratified_split(np.asarray(labels), test_size=0.2, seed=SPLIT_SEED, what=what, names=classes)
    pick = lambda keep: ([files[i] for i in keep], [labels[i] for i in keep])
    return {Split.TRAIN: pick(train), Split.TEST: pick(test)}, classes


def _index(folder: Path, root: Path) -> tuple[list[Path], list[int], list[str]]:
    """The image files of `folder`'s class folders (all checked by `_check_file`), their labels, the class names."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        _check_inside(folder / name, root)
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in EXTENSIONS)
        for path in found:
            _check_file(path, root)
        files += found
        labels += [label] * len(found)
    if not files:
        raise UsageError(f"no images found under {folder}; expected {folder}/<class>/*.png (or .jpg, .bmp, ...)")
    if len(classes) < 2:
        raise UsageError(f"{folder} has {len(classes)} class folder(s); a classifier needs at least 2")
    return files, labels, classes


def _check_inside(path: Path, root: Path) -> None:
    """A link (or a folder reached through one) must lead to a place inside the image folder."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a link loop, before Python 3.13
        raise UsageError(f"cannot read {path}: {error}") from None
    if not target.is_relative_to(root):
        raise UsageError(
            f"{path} leads to {target}, outside the image folder {root}; links must stay inside it "
            "(copy the files in instead)"
        )


def _check_file(path: Path, root: Path) -> None:
    """Refuses (rather than skips: that would change the data silently) anything but a regular file inside `root`."""
    _check_inside(path, root)
    try:
        mode = path.stat().st_mode  # stat does not open: a named pipe does not block here
    except OSError as error:
        raise UsageError(f"cannot read image {path}: {error.strerror or error}") from None
    _require_regular(path, mode)


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
        raise UsageError(f"{path} is {kind}, not a regular file; an image folder may hold only regular image files")


@contextmanager
def _image(path: Path) -> Iterator[Image.Image]:
    """The image, opened as one of FORMATS and at most MAX_IMAGE_PIXELS large. A failure to read it, here or while
    it is decoded in the `with` body, becomes one UsageError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        _require_regular(path, path.stat().st_mode)  # again: the folder may have changed since it was indexed
        with warnings.catch_warnings():
            # Pillow warns above its MAX_IMAGE_PIXELS and refuses above twice that, both above our limit: as an
            # error, its warning refuses the file here instead of printing to stderr. The filter is process-wide
            # while this `with` lasts (until Python 3.14's context-aware warnings); no other thread reads images.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as image:
                _check_pixel_count(path, image.size)
                yield image
    except UsageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UsageError(
            f"image {path} claims more than {Image.MAX_IMAGE_PIXELS} pixels (Pillow's decompression-bomb limit); "
            f"images may have at most {MAX_IMAGE_PIXELS} pixels (4096x4096)"
        ) from None
    except UnidentifiedImageError:
        raise UsageError(f"cannot read image {path}: it is not a {', '.join(FORMATS)} image") from None
    except (OSError, ValueError, EOFError, SyntaxError, IndexError, TypeError, struct.error) as error:
        # what Pillow's plugins raise on a damaged file (OSError also when a header is fine, the pixels truncated)
        raise UsageError(f"cannot read image {path}: {error}") from None


def _check_pixel_count(path: Path, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise UsageError(
            f"image {path} is {width}x{height} = {width * height} pixels; images may have at most "
            f"{MAX_IMAGE_PIXELS} pixels (4096x4096)"
        )


def _decode(files: list[Path]) -> torch.Tensor:
    """The pixels, (N, C, H, W) uint8; `_check_same_shape` has already made sure every image has one shape."""
    arrays = []
    for path in files:
        with _image(path) as image:
            grey = image.mode in _GREY_MODES
            array = np.asarray(image.convert("L" if grey else "RGB"))
        arrays.append(array[None] if grey else array.transpose(2, 0, 1))  # (C, H, W)
    return torch.from_numpy(np.stack(arrays))


def _check_same_shape(root: Path, files: list[Path]) -> None:
    """Size and colour mode of every image of both splits, from the headers (only float images are decoded,
    for NaN): one odd image fails before training starts, not when the test split is read after training.
    Then the memory all of them take once decoded, against MAX_DATA_BYTES."""
    first = None
    for path in files:
        with _image(path) as image:
            shape = (1 if image.mode in _GREY_MODES else 3, image.height, image.width)  # (C, H, W)
            if image.mode == "F":
                _check_float_pixels(path, np.asarray(image))
        first = first or (path, shape)
        if shape != first[1]:
            raise _mismatch(path, shape, *first)
    check_data_bytes(
        f"imagefolder {root}: {len(files)} images of {_describe(first[1])}", len(files) * math.prod(first[1])
    )


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
