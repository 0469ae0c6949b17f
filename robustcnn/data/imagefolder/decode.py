"""Pixels: every header checked once for the (C, H, W) after the eval transform (resized and centre-cropped as
torchvision does), and the images evaluated decoded by DataLoader workers into one preallocated tensor."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from robustcnn.data.base import EvalTransform, Interpolation, check_data_bytes
from robustcnn.data.imagefolder.files import open_image
from robustcnn.data.imagefolder.listing import Folder
from robustcnn.errors import UsageError

_GREY_MODES = {"1", "L", "I", "I;16", "F"}
PARALLEL_FROM = 64  # decode in worker processes above this many images (starting them costs about a second)
MAX_WORKERS = 4  # decoding workers; JPEG decoding and resizing scale to about this before the disk limits


def decode_files(files: Sequence[Path], folder: Folder) -> torch.Tensor:
    """The pixels of `files` after the folder's transform, (N, C, H, W) uint8, decoded by DataLoader workers when
    there are many. A file that fails is one UsageError naming it (workers return the message as data: DataLoader's
    own re-raise would put the worker's traceback into it)."""
    from torch.utils.data import DataLoader

    check_data_bytes(f"imagefolder {folder.root}: {len(files)} images of {describe(folder.shape)}",
                     len(files) * math.prod(folder.shape))  # fmt: skip
    x = torch.empty((len(files), *folder.shape), dtype=torch.uint8)  # (N, C, H, W), filled in place
    workers = min(MAX_WORKERS, os.cpu_count() or 1) if len(files) > PARALLEL_FROM else 0
    decoder = _Decoder(tuple(files), folder.mode, folder.transform)
    loader = DataLoader(decoder, batch_size=16, num_workers=workers, collate_fn=_as_list)
    for batch in loader:
        for i, pixels, error in batch:
            if error is not None:
                raise UsageError(error)
            if pixels.shape != x.shape[1:]:  # the file changed since its header was checked
                raise _mismatch(files[i], tuple(pixels.shape), files[0], folder.shape)
            x.numpy()[i] = pixels  # through numpy: the decoded array may be read-only
    return x


class _Decoder(torch.utils.data.Dataset):
    """Item i: (i, pixels (C, H, W) uint8 or None, the one-line error or None)."""

    def __init__(self, files: tuple[Path, ...], mode: str, transform: EvalTransform) -> None:
        self.files, self.mode, self.transform = files, mode, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, _pixels(self.files[i], self.mode, self.transform), None
        except UsageError as error:
            return i, None, str(error)


def _as_list(batch: list) -> list:
    return batch


_RESAMPLE = {  # Interpolation -> torchvision's InterpolationMode name
    Interpolation.BILINEAR: "BILINEAR",
    Interpolation.BICUBIC: "BICUBIC",
    Interpolation.NEAREST: "NEAREST",
    Interpolation.LANCZOS: "LANCZOS",
}


def _pixels(path: Path, mode: str, transform: EvalTransform) -> np.ndarray:
    """One image as (C, H, W) uint8: converted to `mode` (L or RGB), then resized and centre-cropped as
    torchvision's eval transform does on a PIL image (the same functions, so the same pixels)."""
    with open_image(path) as image:
        image = image.convert(mode)  # decodes: a damaged file fails here, inside open_image, as one line
        if transform.resize is not None or transform.crop is not None:
            from torchvision.transforms import InterpolationMode
            from torchvision.transforms import functional as F

            if transform.resize is not None:
                resample = InterpolationMode[_RESAMPLE[transform.interpolation]]
                image = F.resize(image, [transform.resize], interpolation=resample, antialias=True)
            if transform.crop is not None:
                image = F.center_crop(image, [transform.crop])
        array = np.asarray(image)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)


def check_headers(files: Sequence[Path], transform: EvalTransform, rgb: bool) -> tuple[int, int, int]:
    """The (C, H, W) every image has after the transform, from the headers (only float images are decoded, for
    NaN): one odd image fails before training or any attack starts. Without a transform all images must share
    their size and colour mode; with one, sizes may differ, and images are converted to RGB when any is colour
    (or `rgb`: ImageNet models take RGB)."""
    transformed = transform.resize is not None or transform.crop is not None
    first, colour = None, rgb
    for path in files:
        with open_image(path) as image:
            grey = image.mode in _GREY_MODES
            if image.mode == "F":
                _check_float_pixels(path, np.asarray(image))
            shape = (1 if grey else 3, *_output_size(path, image.size, transform))  # (C, H, W)
        colour = colour or not grey
        first = first or (path, shape)
        if shape[1:] != first[1][1:] or (shape[0] != first[1][0] and not transformed):
            raise _mismatch(path, shape, *first, transform)
    return (3 if colour else 1, *first[1][1:]) if transformed else first[1]


def _output_size(path: Path, size: tuple[int, int], transform: EvalTransform) -> tuple[int, int]:
    """(H, W) after the transform, as torchvision computes it: the shorter side to `resize`, the longer in proportion
    (rounded down), then the crop; an image smaller than the crop is refused (torchvision would pad it)."""
    width, height = size
    if transform.resize is not None:
        short, long = sorted((width, height))
        new_short, new_long = transform.resize, int(transform.resize * long / short)
        width, height = (new_short, new_long) if width <= height else (new_long, new_short)
    if transform.crop is None:
        return height, width
    if min(width, height) < transform.crop:
        raised = f" after --resize {transform.resize}" if transform.resize is not None else ""
        raise UsageError(
            f"image {path} is {width}x{height}{raised}, smaller than --crop {transform.crop}; "
            f"give --resize {transform.crop} (or more) to scale images up first, or remove it"
        )
    return transform.crop, transform.crop


def _mismatch(
    path: Path,
    shape: tuple[int, ...],
    first: Path,
    first_shape: tuple[int, ...],
    transform: EvalTransform | None = None,
) -> UsageError:
    if transform is not None and transform.describe():
        return UsageError(
            f"image {path} is {describe(shape)} after {transform.describe()} but {first} is {describe(first_shape)}; "
            "images of other shapes need --crop N too"
        )
    return UsageError(
        f"image {path} is {describe(shape)} but {first} is {describe(first_shape)}; "
        "all images must have the same size and colour mode (resize them first, or give --resize N --crop N)"
    )


def _check_float_pixels(path: Path, pixels: np.ndarray) -> None:
    """Pillow turns float images into 8 bits by clipping to 0..255: NaN, inf or values outside would change silently."""
    bad = pixels[~(np.isfinite(pixels) & (pixels >= 0) & (pixels <= 255))]
    if bad.size:
        raise UsageError(
            f"image {path} has pixel value {bad.flat[0].item()!r}; float images must hold finite values in 0..255 "
            "(or save it as an 8-bit PNG)"
        )


def describe(shape: tuple[int, ...]) -> str:
    channels, height, width = shape
    return f"{width}x{height} {'greyscale' if channels == 1 else 'colour'}"
