"""Datasets by name. Add one by writing a `Source` subclass registered with `@DATASETS.register`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from robustcnn.data import imagefolder, npz, offline, vision  # noqa: F401  (registers the datasets)
from robustcnn.data.base import (
    DATASETS,
    Augment,
    DataOptions,
    DatasetInfo,
    ImageSet,
    Split,
    default_data_dir,
)

__all__ = [
    "DATASETS",
    "Augment",
    "DataOptions",
    "DatasetInfo",
    "ImageSet",
    "Split",
    "dataset_info",
    "dataset_names",
    "load_dataset",
]


def dataset_names() -> list[str]:
    """Registered names; 'imagefolder' is used as imagefolder:PATH."""
    return DATASETS.names()


def _resolve(name: str, data_dir: str | Path | None, download: bool) -> tuple[str, DataOptions]:
    base, _, argument = str(name).partition(":")
    DATASETS.get(base)  # unknown names fail here, listing the valid ones
    options = DataOptions(Path(data_dir) if data_dir else default_data_dir(), download, argument or None)
    return base, options


def dataset_info(name: str, data_dir: str | Path | None = None, download: bool = False) -> DatasetInfo:
    base, options = _resolve(name, data_dir, download)
    return DATASETS.get(base)().info(options)


def load_dataset(
    name: str = "mnist5k",
    split: str | Split = "test",
    data_dir: str | Path | None = None,
    download: bool = False,
) -> ImageSet:
    """Loads a split into memory: `ImageSet.x` is uint8 (N, C, H, W), `.images()` gives floats in [0, 1]."""
    split = Split.parse(split)
    base, options = _resolve(name, data_dir, download)
    return _load(base, split, options)


@lru_cache(maxsize=8)
def _load(base: str, split: Split, options: DataOptions) -> ImageSet:
    source = DATASETS.get(base)()
    x, y = source.load(split, options)
    return ImageSet(source.info(options), split, x, y)
