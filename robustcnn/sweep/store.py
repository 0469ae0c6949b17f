"""Finished cells on disk: one compressed .npz per cell, written atomically, named by its cache key.

A cell holds the numbers it computed (JSON: eps or scale, n_correct, seconds, ...) and per-example flags
(packed bits): which examples were still classified correctly. Nothing about the sweep that computed it
(model id, suite, seed): the current sweep builds its rows, so a cell found again under another model id
or suite name is reported under the current ones. results.csv is rebuilt from the cells, so a kill at any
moment loses at most the cell in flight and can never duplicate or tear a row.

A cell read back is checked against what the plan needs of it (`Expected`: its rows, examples and extra
arrays): a file that is unreadable, or readable but wrong (edited, cut short, written by something else),
is reported and computed again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustcnn.console import say
from robustcnn.errors import UsageError
from robustcnn.fileio import atomic_path
from robustcnn.results import EPS_TOLERANCE

CELLS = "cells"
LOCK_FILE = ".lock"  # empty; only locked


def cell_key(identity: dict[str, Any]) -> str:
    """Hash of everything a cell's result depends on (model, attack, eps, data subset, seed, mode, versions)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


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


class CellStore:
    def __init__(self, out: Path):
        self.folder = Path(out) / CELLS
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def load(self, key: str, expected: Expected | None = None) -> Cell | None:
        """The finished cell, or None if absent, unreadable or not what `expected` (the plan) needs of it: then it
        is recomputed. Without `expected` (a cell read outside a sweep) it need only be whole and consistent."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            cell = _read_cell(path, expected)
            if expected is not None:
                expected.check(cell)
        except BadCell as error:
            say(f"{path} is not a readable cell ({error}); computing that cell again")
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # JSONDecodeError: ValueError
            say(f"{path} is not a readable cell ({type(error).__name__}); computing that cell again")
            return None
        return cell

    def save(self, key: str, cell: Cell) -> None:
        flags = np.atleast_2d(cell.flags).astype(bool)
        arrays = {f"extra_{k}": v for k, v in cell.extra.items()}
        with atomic_path(self.path(key)) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                rows=np.array(json.dumps(cell.values)),
                n=np.array(flags.shape[1]),
                flags=np.packbits(flags, axis=1),
                **arrays,
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while results are assembled, so processes sharing the folder (shards) do it one at a time and
        the last to finish writes last. POSIX record locks: also across machines on NFS."""
        path = self.folder / LOCK_FILE
        check_lock_file(path)
        try:  # O_NOFOLLOW: a link planted after the check is refused too, never opened (or created) where it points
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as error:
            reason = "a symbolic link" if error.errno == errno.ELOOP else error.strerror or str(error)
            raise UsageError(f"cannot lock {path}: {reason}; delete it and re-run") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def check_lock_file(path: Path) -> None:
    """The lock file, if there, must be a regular file: a symbolic link (or a FIFO, a device) is refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise UsageError(f"{path} is {what}; robustcnn locks only a plain file of its own: delete it and re-run")


MAX_ROWS_TEXT = 1 << 20  # bytes of a cell's row JSON: a grid of at most 100 rows takes ~10 KB
MAX_EXTRA_BYTES = 1 << 30  # an extra array of a cell read outside any plan (shape unknown): 1 GiB at most


def _read_cell(path: Path, expected: Expected | None) -> Cell:
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


class MemoryStore:
    """Cells held in memory: what a Ray task was handed (finished cells of its chain) and what it computes."""

    def __init__(self, cells: dict[str, Cell] | None = None):
        self.cells = dict(cells or {})

    def load(self, key: str, expected: Expected | None = None) -> Cell | None:
        """The cell if held: handed over by the driver, which checked it against the plan when it read it."""
        return self.cells.get(key)

    def save(self, key: str, cell: Cell) -> None:
        self.cells[key] = cell
