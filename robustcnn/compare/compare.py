"""compare(OLD, NEW): two sweeps (or two models of one) matched row by row, each matched row tested as paired data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robustcnn.compare.pairs import ComparedRow, Unmatched, compare_pair, side
from robustcnn.errors import UsageError
from robustcnn.report.load import SweepData, load_sweep
from robustcnn.results import RowKind

GATED_KINDS = (RowKind.ATTACK.value, RowKind.WORST_CASE.value, RowKind.CERTIFIED.value, RowKind.SMOOTHED.value)
# the robust accuracies a gate watches; a clean-accuracy change is shown, never gated on

COLUMNS = (
    "old_model", "new_model", "kind", "attack", "norm", "eps", "scale", "params", "n", "old_correct", "new_correct",
    "old_accuracy", "new_accuracy", "difference", "ci_low", "ci_high", "old_only", "new_only", "p_value", "p_holm",
    "significant",
)  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    old: Path
    new: Path
    rows: list[ComparedRow]
    unmatched: list[Unmatched]
    alpha: float

    def frame(self) -> pd.DataFrame:
        """One row per compared row; accuracies and the interval as fractions, the difference new - old."""
        return comparison_frame(self.rows, self.alpha)

    def drops(self, points: float) -> list[ComparedRow]:
        """Robust accuracies that fell by more than `points` percentage points, significantly; largest first."""
        found = [
            row
            for row in self.rows
            if row.key.kind in GATED_KINDS and -row.result.difference * 100 > points and row.significant(self.alpha)
        ]
        return sorted(found, key=lambda row: row.result.difference)


def comparison_frame(rows: list[ComparedRow], alpha: float) -> pd.DataFrame:
    records = []
    for row in rows:
        key, result = row.key, row.result
        patch = key.kind == RowKind.ATTACK.value and key.norm == ""
        records.append(
            {
                "old_model": row.old_model,
                "new_model": row.new_model,
                "kind": key.kind,
                "attack": key.attack,
                "norm": key.norm,
                "eps": math.nan if patch else key.at,
                "scale": key.at if patch else math.nan,
                "params": key.params,
                "n": result.n,
                "old_correct": result.old_correct,
                "new_correct": result.new_correct,
                "old_accuracy": result.old_accuracy,
                "new_accuracy": result.new_accuracy,
                "difference": result.difference,
                "ci_low": result.low,
                "ci_high": result.high,
                "old_only": result.old_only,
                "new_only": result.new_only,
                "p_value": result.p_value,
                "p_holm": row.p_holm,
                "significant": row.significant(alpha),
            }
        )
    return pd.DataFrame(records, columns=list(COLUMNS))


def compare(
    old: str | Path | SweepData,
    new: str | Path | SweepData | None = None,
    models: tuple[str, str] | None = None,
    alpha: float = 0.05,
) -> Comparison:
    """Pairs every row of OLD with the same row of NEW (same model id, attack, eps, parameters and images) and tests
    each difference. `new` defaults to `old`; `models=(OLD_ID, NEW_ID)` compares those two models only."""
    if not 0 < alpha < 1:
        raise UsageError(f"alpha {alpha!r} is not allowed; it must be between 0 and 1 (e.g. 0.05)")
    old_sweep = old if isinstance(old, SweepData) else load_sweep(old)
    new_sweep = old_sweep if new is None else new if isinstance(new, SweepData) else load_sweep(new)
    rows, unmatched = [], []
    for old_model, new_model in _model_pairs(old_sweep, new_sweep, models, unmatched):
        result = compare_pair(side(old_sweep, old_model), side(new_sweep, new_model))
        rows += result.rows
        unmatched += result.unmatched
    return Comparison(old_sweep.out_dir, new_sweep.out_dir, rows, unmatched, alpha)


def _model_pairs(old: SweepData, new: SweepData, models, unmatched: list[Unmatched]) -> list[tuple[str, str]]:
    """The given pair, else every model id in both sweeps (the others listed as unmatched)."""
    if models is not None:
        return [tuple(models)]  # a model a sweep lacks is named when its results are read
    unmatched += [
        Unmatched(m, None, "all rows", "model not in the new sweep") for m in old.models if m not in new.models
    ]
    unmatched += [
        Unmatched(None, m, "all rows", "model not in the old sweep") for m in new.models if m not in old.models
    ]
    return [(model, model) for model in old.models if model in new.models]
