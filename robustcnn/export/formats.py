"""The export formats, one registry entry each: what a format writes (a per-example table in one file, or files per
model), where it goes by default, and what it needs installed. Adding a format is one `FORMATS.register` entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robustcnn.cell_file import CELLS
from robustcnn.errors import UsageError
from robustcnn.registry import Registry
from robustcnn.report.load import SweepData
from robustcnn.results import (
    CHECKS_FILE,
    COMPARISONS_FILE,
    MANIFEST_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    examples_file,
    gallery_file,
    patch_file,
)

DEFAULT_TABLE = "csv"  # --per-example without --format: needs nothing beyond robustcnn's own dependencies
# what --to must never replace
SWEEP_FILES = (RESULTS_FILE, MANIFEST_FILE, CHECKS_FILE, REPORT_FILE, SUMMARY_FILE, COMPARISONS_FILE)
SWEEP_FOLDERS = (
    CELLS,
    *(Path(path).parts[0] for path in (examples_file("m"), gallery_file("m"), patch_file("m", "a"))),
)


@dataclass(frozen=True)
class Exported:
    """What an export wrote."""

    format: str  # the FORMATS name
    paths: tuple[Path, ...]  # the files written
    rows: int = 0  # rows of a per-example table; 0 for files per model
    notes: tuple[str, ...] = ()  # what was left out, and why


def _nothing_to_check() -> None:
    return None


@dataclass(frozen=True)
class Format:
    name: str
    per_example: bool  # one row per (model, row of results.csv, example) in one file; else files per model
    default: str  # where it goes, relative to the sweep folder: a file (a table) or a folder (files per model)
    write: Callable[[SweepData, Path], Exported]  # (the sweep, the file or folder to write) -> what it wrote
    check: Callable[[], None] = _nothing_to_check  # raises UsageError when what it needs is not installed

    @property
    def suffix(self) -> str:
        return Path(self.default).suffix


FORMATS: Registry[Format] = Registry("export format")


def choose(per_example: bool, fmt: str | None, to: str | Path | None) -> Format:
    """The format asked for: --format NAME, else for --per-example the one --to's suffix names, else csv."""
    if fmt is None and not per_example:
        raise UsageError(
            "say what to export: --per-example (one row per model, attack, eps and example; --format csv or "
            "parquet) or --format robustbench (RobustBench's model-info JSON per model)"
        )
    chosen = FORMATS.get(fmt if fmt is not None else _by_suffix(to) or DEFAULT_TABLE)
    if per_example and not chosen.per_example:
        raise UsageError(f"--format {chosen.name} writes one file per model, not rows per example; drop --per-example")
    if to is not None and chosen.per_example and Path(to).suffix.lower() != chosen.suffix:
        raise UsageError(f"--to {to} does not end in {chosen.suffix}, the suffix of --format {chosen.name} files")
    return chosen


def _by_suffix(to: str | Path | None) -> str | None:
    suffix = Path(to).suffix.lower() if to is not None else ""
    return next((f.name for f in FORMATS.entries() if f.per_example and f.suffix == suffix), None)


def target(chosen: Format, out_dir: Path, to: str | Path | None) -> Path:
    """Where the export goes: the format's default inside the sweep folder, or `to`, never over the sweep's own
    files (an export over results.csv would lose the sweep)."""
    path = out_dir / chosen.default if to is None else Path(to).expanduser()
    if chosen.per_example and path.is_dir():
        raise UsageError(f"--to {path} is a folder; give a file name such as {path / Path(chosen.default).name}")
    if not chosen.per_example and path.exists() and not path.is_dir():
        raise UsageError(f"--to {path} is a file; --format {chosen.name} writes files into a folder")
    try:
        inside = path.resolve().relative_to(out_dir.resolve()).parts
    except ValueError:
        return path
    if inside and ("/".join(inside) in SWEEP_FILES or inside[0] in SWEEP_FOLDERS):
        raise UsageError(f"--to {path} would replace the sweep's own {'/'.join(inside)}; choose another path")
    return path
