"""Finished cells on disk: one compressed .npz per cell (the format: robustcnn/cell_file.py), written atomically,
named by its cache key.

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
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from robustcnn.cell_file import CELLS, BadCell, Cell, Expected, read_cell
from robustcnn.console import say
from robustcnn.errors import UsageError
from robustcnn.fileio import atomic_path

LOCK_FILE = ".lock"  # empty; only locked


def cell_key(identity: dict[str, Any]) -> str:
    """Hash of everything a cell's result depends on (model, attack, eps, data subset, seed, mode, versions)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


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
            cell = read_cell(path, expected)
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


class MemoryStore:
    """Cells held in memory: what a Ray task was handed (finished cells of its chain) and what it computes."""

    def __init__(self, cells: dict[str, Cell] | None = None):
        self.cells = dict(cells or {})

    def load(self, key: str, expected: Expected | None = None) -> Cell | None:
        """The cell if held: handed over by the driver, which checked it against the plan when it read it."""
        return self.cells.get(key)

    def save(self, key: str, cell: Cell) -> None:
        self.cells[key] = cell
