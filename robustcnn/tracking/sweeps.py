"""A finished sweep, one tracked run per model: what `python -m robustcnn.sweep --track mlflow` logs.

Everything is read back from the files the sweep wrote (`load_sweep`: results.csv and manifest.json), and the
numbers are the report's headline: accuracy at each attack's headline eps, which the sweep decided per model and
wrote into the manifest. So a tracker shows what results.csv and report.html say. A tracker that fails here fails
the command (exit 1) with the files complete: re-running the same command resumes every cell and logs again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from robustcnn.console import say
from robustcnn.errors import RunFailed, UsageError, first_line
from robustcnn.report.load import SweepData, load_sweep
from robustcnn.report.tables import Cell, Column, headline
from robustcnn.results import (
    CHECKS_FILE,
    COMPARISONS_FILE,
    MANIFEST_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    ModelEntry,
    RowKind,
    params_object,
)
from robustcnn.tracking.base import (
    SWEEP_EXPERIMENT,
    ModelRecord,
    Tracker,
    cannot_start,
    check_sweep_track,
    existing,
    metric_key,
    param_text,
)

# each model's run gets those there
ARTIFACTS = (RESULTS_FILE, MANIFEST_FILE, REPORT_FILE, SUMMARY_FILE, CHECKS_FILE, COMPARISONS_FILE)
DESCRIBED = tuple(kind.value for kind in RowKind if kind not in (RowKind.CLEAN, RowKind.PROBE))  # rows with params


class SweepTracking:
    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    @classmethod
    def connect(cls, track: str, uri: str | None) -> SweepTracking:
        """Built before any attack runs, so a missing library or a store that refuses is one line, not a lost hour."""
        backend = check_sweep_track(track)
        try:
            return cls(backend(uri, SWEEP_EXPERIMENT))
        except UsageError:
            raise
        except Exception as error:  # the library's own errors, before any attack
            raise cannot_start(backend, uri, error) from None

    def log(self, out: Path) -> None:
        """One run per model of the finished sweep in `out`; a shard ahead of the others logs nothing."""
        data = load_sweep(out)
        if data.manifest is None or data.manifest.status != "finished":
            say(f"{out}: not tracked yet: the sweep is not complete (the shard that finishes last logs it)")
            return
        records = model_records(data)
        tracker = self.tracker
        try:
            for record in records:
                tracker.model(record)
        except Exception as error:  # after every file is written: say so, and how to log again
            raise RunFailed(
                f"--track {tracker.name}: {tracker.library} at {tracker.where} failed ({first_line(error)}); the "
                f"sweep's files in {out} are complete: re-run the same command to log them again (every cell is kept)"
            ) from None
        say(f"tracked {len(records)} model(s) in {tracker.library} at {tracker.where} (experiment {SWEEP_EXPERIMENT})")


def model_records(data: SweepData) -> list[ModelRecord]:
    """What each model's tracked run holds, from the sweep's files."""
    table = headline(data.results, data.models, data.manifest)
    artifacts = existing([data.out_dir / name for name in ARTIFACTS])
    records = []
    for model, cells in table.rows:
        entry = data.models.get(model) or ModelEntry(id=model)
        rows = data.results[data.results["model"] == model]
        records.append(
            ModelRecord(
                name=model,
                params=_params(data, entry, rows, table.columns, cells),
                metrics=_metrics(table.columns, cells),
                tags=_tags(data, entry),
                artifacts=artifacts,
            )
        )
    return records


def _metrics(columns: list[Column], cells: list[Cell | None]) -> dict[str, float]:
    """The headline row: "accuracy/clean", "accuracy/<attack>", "accuracy/worst-case"; "certified/<bound>"."""
    return {
        metric_key(f"{'certified' if column.certified else 'accuracy'}/{column.attack}"): cell.accuracy
        for column, cell in zip(columns, cells, strict=True)
        if cell is not None
    }


def _params(
    data: SweepData, entry: ModelEntry, rows: pd.DataFrame, columns: list[Column], cells: list[Cell | None]
) -> dict[str, str]:
    manifest = data.manifest
    found: dict[str, Any] = {
        "suite": manifest.suite.get("name", ""),
        "seed": manifest.seed,
        "mode": manifest.mode,
        "dataset": entry.dataset,
        "n": entry.n,
    }
    for name, group in rows[rows["kind"].isin(DESCRIBED)].groupby("attack", sort=False):
        found.update(_attack_params(name, group.iloc[0], entry))
    for column, cell in zip(columns, cells, strict=True):
        if cell is not None and cell.eps is not None:
            found[f"{column.attack}.headline_eps"] = cell.eps  # the eps its metric was read at
    return {metric_key(key): param_text(value) for key, value in found.items()}


def _attack_params(name: str, row: pd.Series, entry: ModelEntry) -> dict[str, Any]:
    """An attack's parameters as results.csv's params column holds them, with its type, norm and eps grid."""
    found: dict[str, Any] = {f"{name}.type": row["attack_type"]}
    if row["norm"]:
        found[f"{name}.norm"] = row["norm"]
    if name in entry.grids:
        found[f"{name}.grid"] = entry.grids[name]
    found.update({f"{name}.{key}": value for key, value in params_object(row["params"]).items()})
    return found


def _tags(data: SweepData, entry: ModelEntry) -> dict[str, str]:
    tags = {
        "robustcnn.suite": str(data.manifest.suite.get("name", "")),
        "robustcnn.sweep_dir": str(data.out_dir.resolve()),
        "robustcnn.model_sha256": entry.sha256,
        "robustcnn.model_path": entry.path,
        "robustcnn.dataset": entry.dataset,
    }
    return {key: value for key, value in tags.items() if value}
