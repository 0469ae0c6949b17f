"""The cell file: one compressed .npz per finished cell (rows of numbers as JSON, per-example flags as packed bits),
and how one is read back safely. No torch: the report, compare and export read cells without it (sweep/store.py
writes them).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustcnn.results import EPS_TOLERANCE

CELLS = "cells"  # the sweep directory's folder of cells


def subset_hash(index: np.ndarray) -> str:
    """The hash that names a subset of a test split: part of every cell's key, and the manifest's `subset`."""
    return hashlib.sha256(np.asarray(index).astype(np.int64).tobytes()).hexdigest()[:16]


NUMBERS = ("eps", "scale", "n", "n_correct", "target_success", "seconds")  # what a cell keeps per row


@dataclass
class Cell:
    values: list[dict[str, Any]]  # per row: the NUMBERS computed (eps or scale, n, n_correct, ...)
    flags: np.ndarray  # (len(values), n) bool: example still correct under this row's attack
    extra: dict[str, np.ndarray]  # e.g. the patch image


class BadCell(ValueError):
    """A cell file that is readable but does not hold what its place in the plan needs; the message says what."""


@dataclass(frozen=True)
class Expected:
    """What the plan needs of one cell: checked on every cell read back, so a wrong one is recomputed, not used."""

    n: int  # examples: the length of each row's flags
    name: str  # the number that names a row: "eps" (eps or L2 radius) or "scale" (patch)
    grid: tuple[float, ...]  # that number, row by row
    extra: dict[str, tuple[int, ...]] = field(default_factory=dict)  # extra array -> its shape

    def check(self, cell: Cell) -> None:
        """Raises BadCell naming the first thing in `cell` that is not as planned."""
        if len(cell.values) != len(self.grid):
            raise BadCell(f"{len(cell.values)} row(s), the plan has {len(self.grid)}")
        if cell.flags.shape != (len(self.grid), self.n):
            raise BadCell(f"flags of shape {cell.flags.shape}, the plan needs {(len(self.grid), self.n)}")
        for row, planned in zip(cell.values, self.grid, strict=True):
            self._check_row(row, planned)
        if set(cell.extra) != set(self.extra):
            raise BadCell(f"extra arrays {sorted(cell.extra)}, the plan needs {sorted(self.extra)}")
        for name, shape in self.extra.items():
            array = cell.extra[name]
            if array.dtype.kind != "f" or array.shape != shape or np.isnan(array).any():
                raise BadCell(f"{name}: {array.dtype} {array.shape}, the plan needs float {shape} without NaN")

    def _check_row(self, row: dict[str, Any], planned: float) -> None:
        for key in NUMBERS:
            value = row.get(key)
            if value is None or (key == "target_success" and value != value):  # NaN: no image outside the target
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BadCell(f"{key} {value!r} is not a finite number")
            if value < 0 or (key == "target_success" and value > 1) or (key == "n_correct" and value > self.n):
                raise BadCell(f"{key} {value!r} is out of range")
        value = row.get(self.name)
        if value is None or abs(value - planned) > EPS_TOLERANCE:
            raise BadCell(f"a row has {self.name} {value!r}, the plan has {planned!r}")
        if row.get("n") not in (None, self.n):
            raise BadCell(f"a row counts {row['n']!r} examples, the plan has {self.n}")


MAX_ROWS_TEXT = 1 << 20  # bytes of a cell's row JSON: a grid of at most 100 rows takes ~10 KB
MAX_EXTRA_BYTES = 1 << 30  # an extra array of a cell read outside any plan (shape unknown): 1 GiB at most


def read_cell(path: Path, expected: Expected | None = None) -> Cell:
    """A cell file's arrays, each checked for its type and its unpacked size before it is decompressed (so a
    small file cannot unpack to gigabytes); with `expected`, its n must be the plan's."""
    with np.load(path, allow_pickle=False) as data:  # never unpickle
        sizes = {info.filename.removesuffix(".npy"): info.file_size for info in data.zip.infolist()}
        _check_sizes({k: v for k, v in sizes.items() if k in ("rows", "n")}, {"rows": MAX_ROWS_TEXT, "n": 1024})
        text, n = data["rows"], data["n"]
        if text.ndim != 0 or text.dtype.kind != "U":
            raise BadCell(f"rows is a {text.dtype} array of shape {text.shape}, not one JSON string")
        if n.ndim != 0 or n.dtype.kind not in "iu" or int(n) < 0:
            raise BadCell(f"n is {n.tolist()!r}, not a count of examples")
        if expected is not None and int(n) != expected.n:
            raise BadCell(f"n is {int(n)}, the plan has {expected.n} examples")
        rows = json.loads(str(text))
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise BadCell("rows is not a list of objects")
        shape = (len(rows), -(-int(n) // 8))  # one row of packed bits per row
        extra = {k: MAX_EXTRA_BYTES for k in sizes if k.startswith("extra_")}
        if expected is not None:
            extra = {f"extra_{k}": 1024 + 8 * math.prod(v) for k, v in expected.extra.items()}
        _check_sizes(sizes, {"rows": MAX_ROWS_TEXT, "n": 1024, "flags": 1024 + math.prod(shape), **extra})
        packed = data["flags"]
        if packed.dtype != np.uint8 or packed.shape != shape:
            raise BadCell(f"flags are {packed.dtype} of shape {packed.shape}, not {shape[0]} row(s) of packed bits")
        values = [{k: row.get(k) for k in NUMBERS} for row in rows]  # other keys (older cells) are left out
        flags = np.unpackbits(packed, axis=1, count=int(n)).astype(bool)
        extra = {k[6:]: data[k] for k in data.files if k.startswith("extra_")}
    return Cell(values, flags, extra)


def _check_sizes(sizes: dict[str, int], limits: dict[str, int]) -> None:
    """Each array's unpacked bytes against its limit; an array without one is not part of this cell."""
    for name, size in sizes.items():
        if name not in limits:
            raise BadCell(f"it holds an array {name!r} this cell does not have")
        if size > limits[name]:
            raise BadCell(f"{name} takes {size} bytes unpacked, more than this cell can need")
