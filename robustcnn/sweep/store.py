"""Finished cells on disk: one compressed .npz per cell, written atomically, named by its cache key.

A cell holds the numbers it computed (JSON: eps or scale, n_correct, seconds, ...) and per-example flags
(packed bits): which examples were still classified correctly. Nothing about the sweep that computed it
(model id, suite, seed): the current sweep builds its rows, so a cell found again under another model id
or suite name is reported under the current ones. results.csv is rebuilt from the cells, so a kill at any
moment loses at most the cell in flight and can never duplicate or tear a row.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustcnn.console import say
from robustcnn.fileio import atomic_path

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


class CellStore:
    def __init__(self, out: Path):
        self.folder = Path(out) / CELLS
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def load(self, key: str) -> Cell | None:
        """The finished cell, or None if absent or unreadable (then it is simply recomputed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:  # never unpickle
                rows = [{k: row.get(k) for k in NUMBERS} for row in json.loads(str(data["rows"]))]  # older cells: rows
                n = int(data["n"])
                flags = np.unpackbits(data["flags"], axis=1, count=n).astype(bool)
                extra = {k[6:]: data[k] for k in data.files if k.startswith("extra_")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # JSONDecodeError: ValueError
            say(f"{path} is not a readable cell ({type(error).__name__}); computing that cell again")
            return None
        return Cell(rows, flags, extra)

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
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


class MemoryStore:
    """Cells held in memory: what a Ray task was handed (finished cells of its chain) and what it computes."""

    def __init__(self, cells: dict[str, Cell] | None = None):
        self.cells = dict(cells or {})

    def load(self, key: str) -> Cell | None:
        return self.cells.get(key)

    def save(self, key: str, cell: Cell) -> None:
        self.cells[key] = cell
