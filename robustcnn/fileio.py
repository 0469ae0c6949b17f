"""Atomic writes, hashes and the provenance every run and result records."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from robustcnn.errors import UsageError


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_mode()  # what open() would give; mkstemp's 0600 would hide results from co-workers
# Every temp file robustcnn writes ends so: cleanup deletes only these, never a user's own *.tmp beside ours.
TEMP_SUFFIX = ".robustcnn-tmp"
_LIBRARIES = ("robustcnn", "torch", "torchvision", "adversarial-robustness-toolbox", "numpy", "safetensors")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temp path beside `path`; on success renames it over `path`, so readers never see half a file.

    A failed write (disk full, read-only, no such folder) leaves `path` as it was and becomes a one-line
    UsageError naming the file and the reason.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        raise _write_error(path, error) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except OSError as error:
        raise _write_error(path, error) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def is_temp(path: str | os.PathLike) -> bool:
    """Whether `path` is named like a temp file of `atomic_path` (.NAME.RANDOM.robustcnn-tmp)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def remove_stale_temps(folder: str | os.PathLike, older_than: float = 600.0) -> None:
    """Deletes `atomic_path` temp files a killed process left behind (never read, but they take space).

    Only regular files named by `atomic_path` (`is_temp`) and older than `older_than` seconds go: another
    program's *.tmp is never touched, and a writer still at work beside us is not disturbed.
    """
    import stat
    import time

    now = time.time()
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            info = tmp.lstat()  # a symlink is not ours: left alone, never followed
            if is_temp(tmp) and stat.S_ISREG(info.st_mode) and now - info.st_mtime > older_than:
                tmp.unlink()


def _write_error(path: Path, error: OSError) -> UsageError:
    return UsageError(
        f"cannot write {path}: {error.strerror or error}; free some space or pick a writable output directory "
        "(files already written are kept)"
    )


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache  # read from installed packages' metadata: ~10 ms a call, and they do not change while we run
def _library_versions() -> tuple[tuple[str, str], ...]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return tuple(versions.items())


def library_versions() -> dict[str, str]:
    return dict(_library_versions())


def git_sha() -> str | None:
    """The commit of the robustcnn checkout in use, or None when installed from a wheel."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def command_line() -> str:
    """The command as typed (`python -m robustcnn.sweep ...`), quoted so it can be pasted back."""
    import shlex
    import sys

    return " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", sys.argv))


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()}


def suite_folders() -> list[Path]:
    """Where suites live: the checkout's attacks/ folder first (so edits take effect), then the copy inside the
    package (a wheel's robustcnn/suites). Here, not in the sweep, so readers of sweeps find them without torch."""
    checkout = Path(__file__).resolve().parents[1] / "attacks"
    packaged = Path(str(resources.files("robustcnn"))) / "suites"
    return [folder for folder in (checkout, packaged) if folder.is_dir()]
