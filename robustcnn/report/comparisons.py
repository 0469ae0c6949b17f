"""The report's paired comparisons: every pair of models of the sweep (or each against `--baseline`) at the headline
eps, per attack and for the worst case, tested on the examples both saw (robustcnn/compare does the statistics).

A sweep whose per-example results cannot be read (cells/ removed, made before robustcnn recorded the images) gets
a note instead of the table: the rest of the report never depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING

import pandas as pd

from robustcnn.errors import UsageError
from robustcnn.report.load import SweepData
from robustcnn.results import EPS_TOLERANCE, RowKind

if TYPE_CHECKING:  # robustcnn.compare reads sweeps through this package: imported where used, not here
    from robustcnn.compare.pairs import ComparedRow, RowKey

ALPHA = 0.05  # the report's significance level, Holm-adjusted over each pair's rows
EVERY_PAIR_UP_TO = 5  # models; more get each compared with the first (10 pairs at 5 models, 190 at 20)


@dataclass(frozen=True)
class PairTable:
    old: str  # the baseline of the pair (the earlier model in the sweep's order, or --baseline)
    new: str
    rows: list[ComparedRow]
    note: str = ""  # why the pair has no rows


@dataclass(frozen=True)
class Comparisons:
    pairs: list[PairTable]
    note: str = ""  # why there is no comparison at all (one model, per-example results unreadable) or not every pair
    baseline: str | None = None  # each model against this one; None: every pair
    alpha: float = ALPHA

    @property
    def compared(self) -> bool:
        """Whether any pair has rows (else summary.md and comparisons.csv leave the comparisons out)."""
        return any(pair.rows for pair in self.pairs)

    def frame(self) -> pd.DataFrame:
        """comparisons.csv: every compared row of every pair."""
        from robustcnn.compare.compare import comparison_frame

        return comparison_frame([row for pair in self.pairs for row in pair.rows], self.alpha)


def comparisons(data: SweepData, baseline: str | None = None) -> Comparisons:
    """Each pair of models (or each model against `baseline`), at the headline eps."""
    models = data.model_ids
    if baseline is not None and baseline not in models:
        raise UsageError(f"--baseline {baseline!r} is not a model of this sweep; choose one of: {', '.join(models)}")
    if len(models) < 2:
        return Comparisons([], "one model: nothing to compare")
    note = ""
    if baseline is None and len(models) > EVERY_PAIR_UP_TO:
        baseline = models[0]
        note = f"{len(models)} models: each is compared with the first, {baseline} (--baseline MODEL picks another)"
    if baseline is not None:
        pairs = [(baseline, model) for model in models if model != baseline]
    else:
        pairs = list(combinations(models, 2))
    from robustcnn.compare.pairs import side

    try:
        sides = {model: side(data, model) for model in models}
        return Comparisons([_pair(data, sides[old], sides[new]) for old, new in pairs], note, baseline)
    except UsageError as error:  # a file of the sweep's own: the table is left out, the report is not
        return Comparisons([], f"per-example results unreadable: {error}", baseline)


def _pair(data: SweepData, old, new) -> PairTable:
    from robustcnn.compare.pairs import compare_pair

    result = compare_pair(old, new, keep=_headline(data, old.model))
    note = result.unmatched[0].reason if not result.rows and result.unmatched else ""
    return PairTable(old.model, new.model, result.rows, note)


def _headline(data: SweepData, model: str):
    """Clean, each attack at its headline eps and the worst case at its own; not the other eps, patches or bounds."""
    entry = data.models[model]
    at = entry.headline.attack_eps if entry.headline is not None else {}

    def keep(key: RowKey) -> bool:
        if key.kind == RowKind.CLEAN.value:
            return True
        wanted = at.get(key.attack)
        headline_kind = key.kind in (RowKind.ATTACK.value, RowKind.WORST_CASE.value) and key.norm != ""
        return headline_kind and wanted is not None and abs(key.at - wanted) <= EPS_TOLERANCE + 1e-9

    return keep
