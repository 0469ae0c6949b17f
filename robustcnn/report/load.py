"""Reads a sweep directory (results.csv + manifest.json) into typed tables. No torch, no plotting.

Tolerant by design: extra columns are ignored, optional columns missing from older results get defaults,
empty cells become NaN (eps on patch rows, scale on the others). What the report cannot do without is
an error naming the file, the row or the column: a `UsageError`, so the CLI exits 2 and writes nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustcnn.errors import UsageError
from robustcnn.report.entries import NORMS, model_entries
from robustcnn.results import (
    COLUMNS,
    MANIFEST_FILE,
    RESULTS_FILE,
    Manifest,
    ModelEntry,
    RowKind,
    csv_value,
    wilson_interval,
)

KINDS = tuple(kind.value for kind in RowKind)
REQUIRED = ("model", "kind", "attack", "eps", "n", "n_correct", "accuracy")  # the report cannot guess these
NUMERIC = ("eps", "scale", "n", "n_correct", "accuracy", "ci_low", "ci_high", "target_success", "seconds")
_MISSING = {"", "nan", "na", "none", "null"}  # cells that mean "no value" (pandas writes NaN as "")
_UNIT = ("accuracy", "ci_low", "ci_high", "target_success", "scale")  # fractions in [0, 1]; the rest only >= 0


@dataclass(frozen=True)
class SweepData:
    out_dir: Path  # the sweep directory
    results: pd.DataFrame  # normalised results.csv: one row per (model, attack, eps-or-scale)
    manifest: Manifest | None  # manifest.json, None when the directory has none
    models: dict[str, ModelEntry]  # manifest model entries by id, in results order (defaults where it has none)

    @property
    def model_ids(self) -> list[str]:
        return list(self.models)


def load_sweep(out_dir: str | Path) -> SweepData:
    """Reads and checks everything the report needs, before anything is written."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UsageError(f"sweep directory {str(out_dir)!r} does not exist; pass the --out of a finished sweep")
    results = normalize_results(read_results(out_dir / RESULTS_FILE))
    manifest = read_manifest(out_dir / MANIFEST_FILE)
    return SweepData(out_dir, results, manifest, model_entries(manifest, pd.unique(results["model"])))


def read_results(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UsageError(f"{path} does not exist; run `python -m robustcnn.sweep` with --out {path.parent} first")
    try:
        # strings stay strings: a model called "NA" or "null" must not turn into NaN
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{path} is not a readable CSV table ({reason}); re-run the sweep to rewrite it") from None
    for column in frame.columns:
        if column not in NUMERIC:
            frame[column] = frame[column].map(csv_value)  # "'=x" in the file stands for "=x" (results.csv_text)
    return frame


def normalize_results(frame: pd.DataFrame, source: str = RESULTS_FILE) -> pd.DataFrame:
    """Typed columns, defaults for optional ones, intervals filled in; raises UsageError on what it can't fix."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise UsageError(f"{source} lacks the column(s) {', '.join(missing)}; a sweep writes: {', '.join(COLUMNS)}")
    frame = frame.reset_index(drop=True).copy()
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan if column in NUMERIC else ""
    text_columns = [c for c in COLUMNS if c not in NUMERIC]
    frame[text_columns] = frame[text_columns].fillna("").astype(str)
    for column in NUMERIC:
        frame[column] = _numbers(frame[column], column, source)
    _check_kinds(frame, source)
    frame["norm"] = frame["norm"].str.strip().str.lower().map(lambda v: NORMS.get(v, v))
    frame["box"] = frame["box"].str.strip().str.lower()
    frame.loc[frame["attack_type"] == "", "attack_type"] = frame["attack"]
    frame["is_patch"] = (frame["attack_type"] == "patch") | (frame["eps"].isna() & frame["scale"].notna())
    _fill_accuracy(frame, source)
    _check_eps(frame, source)
    keys = ["model", "kind", "attack", "eps", "scale"]
    return frame.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)  # a re-run cell wins


def _numbers(column: pd.Series, name: str, source: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column):
        return _in_range(column.astype(float), name, source)
    text = column.astype(str).str.strip()
    values = pd.to_numeric(text.where(~text.str.lower().isin(_MISSING)), errors="coerce")
    bad = values.isna() & ~text.str.lower().isin(_MISSING)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UsageError(f"{source} row {row + 2}: {name} {text.iloc[row]!r} is not a number")
    return _in_range(values.astype(float), name, source)


def _in_range(values: pd.Series, name: str, source: str) -> pd.Series:
    """inf, negative counts or an accuracy of 7 would render as nonsense: refuse them, naming the row."""
    high = 1.0 if name in _UNIT else math.inf
    bad = values.notna() & ~((values >= 0) & (values <= high) & np.isfinite(values))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        allowed = "a number in [0, 1]" if name in _UNIT else "a finite number >= 0"
        raise UsageError(
            f"{source} row {row + 2}: {name} {float(values.iloc[row])!r} is not allowed; it must be {allowed}"
        )
    return values


def _check_kinds(frame: pd.DataFrame, source: str) -> None:
    bad = ~frame["kind"].isin(KINDS)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UsageError(f"{source} row {row + 2}: kind {frame['kind'].iloc[row]!r} is not one of {', '.join(KINDS)}")


def _fill_accuracy(frame: pd.DataFrame, source: str) -> None:
    """accuracy from n_correct / n when empty; Wilson intervals where the sweep left them out."""
    derived = frame["n_correct"] / frame["n"].where(frame["n"] > 0)
    frame["accuracy"] = frame["accuracy"].fillna(derived)
    bad = frame["accuracy"].isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UsageError(f"{source} row {row + 2}: accuracy is empty and n_correct / n cannot replace it")
    gaps = frame["ci_low"].isna() | frame["ci_high"].isna()
    for i in np.flatnonzero(gaps.to_numpy()):
        n, accuracy = frame.at[i, "n"], frame.at[i, "accuracy"]
        correct = frame.at[i, "n_correct"]
        if math.isnan(correct) and not math.isnan(n):
            correct = round(accuracy * n)
        low, high = wilson_interval(int(correct), int(n)) if not math.isnan(n) else (math.nan, math.nan)
        frame.at[i, "ci_low"], frame.at[i, "ci_high"] = low, high


def _check_eps(frame: pd.DataFrame, source: str) -> None:
    bad = frame["eps"].isna() & ~frame["is_patch"]
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UsageError(f"{source} row {row + 2}: eps is empty on a {frame['kind'].iloc[row]} row (only patch rows)")


def read_manifest(path: Path) -> Manifest | None:
    """The sweep's provenance. A missing file is allowed (old results): None, and the report says so."""
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{path} is not valid JSON ({error}); re-run the sweep to rewrite it") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"{path} must hold a JSON object, not {type(manifest).__name__}")
    return as_manifest(manifest)


def as_manifest(data: Manifest | dict[str, Any] | None) -> Manifest | None:
    """A manifest as the report reads it: a `Manifest`, or one read from manifest.json's object (any version)."""
    if data is None or isinstance(data, Manifest):
        return data
    raw = data.get("models", [])
    if isinstance(raw, dict):
        raw = [{"id": key, **value} if isinstance(value, dict) else value for key, value in raw.items()]
    if not isinstance(raw, list) or not all(isinstance(e, dict) and "id" in e for e in raw):
        raise UsageError(f"{MANIFEST_FILE}: 'models' must be a list of objects with an 'id'; got {_short(raw)}")
    return Manifest.from_json(data)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
