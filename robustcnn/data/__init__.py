"""Datasets by name. Add one by writing a `Source` subclass registered with `@DATASETS.register`."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from robustcnn.data import imagefolder, npz, offline, vision  # noqa: F401  (registers the datasets)
from robustcnn.data.base import (
    DATASETS,
    Augment,
    DataOptions,
    DatasetInfo,
    EvalTransform,
    FolderOptions,
    ImageSet,
    Interpolation,
    Split,
    default_data_dir,
)
from robustcnn.errors import UsageError

__all__ = [
    "DATASETS",
    "Augment",
    "DataOptions",
    "DatasetInfo",
    "EvalTransform",
    "FolderOptions",
    "ImageSet",
    "Interpolation",
    "Split",
    "dataset_info",
    "dataset_names",
    "file_names",
    "load_dataset",
    "split_labels",
]


def dataset_names() -> list[str]:
    """Registered names; 'imagefolder' is used as imagefolder:PATH."""
    return DATASETS.names()


def _resolve(
    name: str, data_dir: str | Path | None, download: bool, folder: FolderOptions | None
) -> tuple[str, DataOptions]:
    base, _, argument = str(name).partition(":")
    DATASETS.get(base)  # unknown names fail here, listing the valid ones
    folder = folder or FolderOptions()
    if folder.given() and base != "imagefolder":
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in folder.given())
        raise UsageError(f"{flags} apply to imagefolder:PATH data only, not to {name!r} (its images have one size)")
    options = DataOptions(Path(data_dir) if data_dir else default_data_dir(), download, argument or None, folder)
    return base, options


def dataset_info(
    name: str, data_dir: str | Path | None = None, download: bool = False, folder: FolderOptions | None = None
) -> DatasetInfo:
    """What the dataset is (shape, classes, mean/std, threat model) without reading its images where it can.
    `folder`: the eval transform and label files of an image folder (`FolderOptions`)."""
    base, options = _resolve(name, data_dir, download, folder)
    return DATASETS.get(base)().info(options)


def load_dataset(
    name: str = "mnist5k",
    split: str | Split = "test",
    data_dir: str | Path | None = None,
    download: bool = False,
    folder: FolderOptions | None = None,
    subset: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> ImageSet:
    """Loads a split into memory: `ImageSet.x` is uint8 (N, C, H, W), `.images()` gives floats in [0, 1].

    With `subset` (positions in the split, e.g. from `split_labels`) only those images are read, in that order:
    an image folder then decodes nothing else, so memory follows the subset, not the folder.
    """
    split = Split.parse(split)
    base, options = _resolve(name, data_dir, download, folder)
    if subset is None:
        return _load(base, split, options)
    source = DATASETS.get(base)()
    index = np.asarray(subset, dtype=np.int64).reshape(-1)
    size = len(_labels(base, split, options))
    if index.size and not (index.min() >= 0 and index.max() < size):
        raise ValueError(f"subset positions must lie in 0..{size - 1} (the {split.value} split of {name!r})")
    if not source.lazy:
        return _load(base, split, options).subset(index)
    x, y = source.load_subset(split, options, index)
    return ImageSet(source.info(options), split, x, y)


def file_names(
    name: str,
    split: str | Split = "test",
    data_dir: str | Path | None = None,
    download: bool = False,
    folder: FolderOptions | None = None,
    subset: Sequence[int] | np.ndarray | None = None,
) -> list[str] | None:
    """The file of each image (`subset`: positions in the split, in that order; default all), relative to the
    split's folder, for data read from one file per image (an image folder); None for the others. No pixel is read.
    """
    base, options = _resolve(name, data_dir, download, folder)
    index = None if subset is None else np.asarray(subset, dtype=np.int64).reshape(-1)
    return DATASETS.get(base)().file_names(Split.parse(split), options, index)


def split_labels(
    name: str,
    split: str | Split = "test",
    data_dir: str | Path | None = None,
    download: bool = False,
    folder: FolderOptions | None = None,
) -> torch.Tensor:
    """The labels of a split, y int64 (N,), from its listing: an image folder decodes no image for them."""
    base, options = _resolve(name, data_dir, download, folder)
    return _labels(base, Split.parse(split), options)


def _labels(base: str, split: Split, options: DataOptions) -> torch.Tensor:
    source = DATASETS.get(base)()
    return source.labels(split, options) if source.lazy else _load(base, split, options).y


@lru_cache(maxsize=8)
def _load(base: str, split: Split, options: DataOptions) -> ImageSet:
    source = DATASETS.get(base)()
    x, y = source.load(split, options)
    return ImageSet(source.info(options), split, x, y)
