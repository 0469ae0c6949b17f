"""Which rows of two models' results may be compared, and their paired differences.

Two rows pair up only when they measured the same thing on the same images: the same kind, attack, threat model,
eps (or patch scale) and attack parameters (as run: after any adaptation), under the same sweep setting (nested or
naive, cascade, draws of a random model), on the same test images in the same order (dataset and the subset's hash).
Everything else is listed as unmatched with the reason, never compared silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from robustcnn.compare.paired import PairedDifference, holm, paired_difference
from robustcnn.outcomes import Outcomes, outcomes
from robustcnn.report.load import SweepData
from robustcnn.results import RowKind, params_object

DIGITS = 9  # eps and scales are matched to this many decimals (grids come from fractions such as 1/3 x 0.3)


@dataclass(frozen=True, order=True)
class RowKey:
    """What a row measured, as far as pairing goes."""

    kind: str
    attack: str
    norm: str
    at: float  # eps, or the scale of a patch
    params: str  # the attack's parameters as run, as canonical JSON

    @property
    def label(self) -> str:
        if self.kind == RowKind.CLEAN.value:
            return "clean"
        what = "scale" if self.kind == RowKind.ATTACK.value and self.norm == "" else "eps"
        return f"{self.attack} @ {what} {self.at:g}"


@dataclass(frozen=True)
class Side:
    """One model of one sweep, with its per-example results and the setting that shaped its numbers."""

    sweep: SweepData
    model: str
    results: Outcomes

    @property
    def setting(self) -> dict[str, object]:
        manifest = self.sweep.manifest
        entry = self.sweep.models[self.model]
        return {
            "mode": (manifest.mode if manifest is not None else "") or "nested",
            "cascade": bool(manifest.suite.get("cascade")) if manifest is not None else False,
            "draws": entry.draws or 1,
        }

    def keys(self) -> dict[RowKey, int]:
        """Each row's key -> its index in the sweep's results."""
        records, rows = self.results.records, self.results.rows()
        attacks = {str(records[row]["attack"]): _canonical(str(records[row]["params"])) for row in rows}
        return {row_key(records[row], attacks): row for row in rows}


def side(sweep: SweepData, model: str) -> Side:
    return Side(sweep, model, outcomes(sweep, model))


def row_key(record, attack_params: dict[str, str]) -> RowKey:
    """The row's key; a worst case's parameters are those of every attack it covers (`attack_params`: the model's
    attacks' canonical parameters), so two worst cases over differently run attacks never pair up."""
    at = record["scale"] if record["is_patch"] else record["eps"]
    params = _canonical(str(record["params"]))
    if record["kind"] == RowKind.WORST_CASE.value:
        covered = params_object(params).get("attacks")
        covered = covered if isinstance(covered, list) else []
        params = json.dumps({str(name): attack_params.get(str(name), "") for name in covered}, sort_keys=True)
    return RowKey(
        str(record["kind"]),
        str(record["attack"]),
        str(record["norm"]),
        round(float(at), DIGITS) if not math.isnan(at) else math.nan,
        params,
    )


def _canonical(params: str) -> str:
    try:
        return json.dumps(json.loads(params or "{}"), sort_keys=True, separators=(",", ":"))
    except ValueError:  # results.csv is the user's file: text that is not JSON is compared as text
        return params


@dataclass(frozen=True)
class ComparedRow:
    old_model: str
    new_model: str
    key: RowKey
    result: PairedDifference
    p_holm: float  # the p-value adjusted over the rows of this pair of models (Holm)

    def significant(self, alpha: float) -> bool:
        return self.p_holm < alpha


@dataclass(frozen=True)
class Unmatched:
    old_model: str | None  # None: the row (or model) is only in the new results
    new_model: str | None
    what: str  # the row's label, or "all rows"
    reason: str


@dataclass(frozen=True)
class PairResult:
    rows: list[ComparedRow]
    unmatched: list[Unmatched]


def compare_pair(old: Side, new: Side, keep: Callable[[RowKey], bool] | None = None) -> PairResult:
    """Every row of `old` and `new` with a counterpart, paired; the rest listed with the reason."""
    why_not = _why_not_paired(old, new)
    if why_not:
        return PairResult([], [Unmatched(old.model, new.model, "all rows", why_not)])
    old_keys, new_keys = old.keys(), new.keys()
    if keep is not None:
        old_keys = {k: v for k, v in old_keys.items() if keep(k)}
        new_keys = {k: v for k, v in new_keys.items() if keep(k)}
    matched = [key for key in old_keys if key in new_keys]
    differences = [
        paired_difference(old.results.correct(old_keys[key]), new.results.correct(new_keys[key])) for key in matched
    ]
    adjusted = holm([d.p_value for d in differences])
    rows = [
        ComparedRow(old.model, new.model, key, d, p) for key, d, p in zip(matched, differences, adjusted, strict=True)
    ]
    return PairResult(rows, _unmatched(old, new, list(old_keys), list(new_keys)))


def _unmatched(old: Side, new: Side, old_keys: list[RowKey], new_keys: list[RowKey]) -> list[Unmatched]:
    """Rows on one side only; a row whose attack and eps are on both sides with other parameters says which."""
    params = {(k.kind, k.attack, k.norm, k.at): k.params for k in new_keys}
    found = set(new_keys)
    listed = []
    for key in old_keys:
        if key in found:
            continue
        other = params.get((key.kind, key.attack, key.norm, key.at))
        reason = f"other parameters: {key.params} vs {other}" if other is not None else "not in the new results"
        listed.append(Unmatched(old.model, new.model if other is not None else None, key.label, reason))
    ours = {(k.kind, k.attack, k.norm, k.at) for k in old_keys}
    for key in new_keys:
        if (key.kind, key.attack, key.norm, key.at) not in ours:
            listed.append(Unmatched(None, new.model, key.label, "not in the old results"))
    return listed


def _why_not_paired(old: Side, new: Side) -> str:
    """Why two models' rows cannot be paired at all, or ""."""
    a, b = old.results.examples, new.results.examples
    if not a.subset or not b.subset:
        return "a sweep made before robustcnn recorded which images it used cannot be paired: re-run it"
    if not a.same_images(b):
        return (
            f"different images: {a.dataset} ({a.n} images, subset {a.subset}) vs "
            f"{b.dataset} ({b.n} images, subset {b.subset})"
        )
    if old.setting != new.setting:
        differ = [f"{k} {old.setting[k]} vs {new.setting[k]}" for k in old.setting if old.setting[k] != new.setting[k]]
        return "different sweep settings: " + ", ".join(differ)
    return ""
