"""Is an adversarially trained epoch sound? Catastrophic overfitting and runs that never became robust.

One rule, used by the training loop (to stop, and to pick best.safetensors) and by the report (on the
training log, and on the sweep's own rows). Pure functions of validation numbers: no torch here.

Thresholds, from validation logs at mnist5k's eps 0.3 (256 held-out images; the runs: docs/training.md).
Single-step minus PGD-10 accuracy, and PGD-10 as a fraction of single-step accuracy, after the warm-up:
- PGD-10 AT 9-12 points (0.85-0.89), PGD-3 14-24 (0.69-0.81), 2-step PGD 16-29 (0.62-0.79): sound;
- 2-step PGD with a too-large step 34-41 points (0.50-0.60): weak, PGD-40 51%, but not overfitted;
- FGSM-RS 63-73 points (0.08-0.18), 58-98 (0.01-0.08) with Wong et al.'s network: overfitted, PGD-40 7-18%.
One standard error of such a difference on 256 images is about 4 points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GAP = 0.30  # single-step accuracy this far above PGD accuracy ...
RATIO = 0.5  # ... with PGD accuracy below this fraction of it: catastrophic overfitting or gradient masking
PATIENCE = 2  # settled epochs in a row with that gap before training stops: the first may still be settling
DROP = 0.20  # PGD accuracy this far below its best so far: robustness collapsed (Wong et al. 2020's sign)
FLOOR_TIMES_CHANCE = 2.0  # PGD accuracy at or below twice chance level is no robustness worth the name
SINGLE_STEP = ("val_fgsm_acc", "val_train_attack_acc")  # log columns of single-step attacks (when one-step)
MULTI_STEP = "val_pgd_acc"
SLACK = 1e-9  # float slack: 0.55 - 0.25 is 0.30000000000000004, which is a gap of exactly GAP
OVERFITTING = ("catastrophic overfitting", "robustness collapsed")  # the problems that stop training


def floor(num_classes: int) -> float:
    return FLOOR_TIMES_CHANCE / max(num_classes, 2)


def single_step_accuracy(row: Mapping[str, Any], one_step_training: bool) -> float:
    """Accuracy under the single-step attacks of a validation row: FGSM, and the method's own if one step
    (`one_step_training`: the run's MethodTraits.single_step, from run.json)."""
    keys = SINGLE_STEP if one_step_training else SINGLE_STEP[:1]
    return max(float(row[k]) for k in keys if row.get(k) is not None)


@dataclass(frozen=True)
class Verdict:
    sound: bool  # robust enough to keep as best.safetensors
    overfitted: bool  # catastrophic overfitting (or masking), or a collapse: stop training
    problem: str  # "" when sound; else what is wrong, with the numbers
    what: str = ""  # its name: one of OVERFITTING, or "not robust"


def overfitting_gap(single: float, pgd: float) -> bool:
    """PGD breaks most of what the single step leaves: far apart in points, and PGD below half of it."""
    return single - pgd > GAP + SLACK and pgd < RATIO * single - SLACK


def judge_log(
    rows: Sequence[Mapping[str, Any]], settled: Sequence[bool], *, floor_acc: float, one_step_training: bool
) -> list[Verdict]:
    """A verdict per epoch of a training log. `settled[i]`: epoch i trained at full eps throughout (after the
    warm-up); before that only `sound` is judged, since a model still on a small eps shows a large
    single-step gap at the full one without overfitting."""
    verdicts: list[Verdict] = []
    best_pgd, streak = 0.0, 0  # best PGD accuracy so far; settled epochs in a row with the gap
    for row, calm in zip(rows, settled, strict=True):
        pgd = float(row[MULTI_STEP])
        single = single_step_accuracy(row, one_step_training)
        streak = streak + 1 if calm and overfitting_gap(single, pgd) else 0
        verdicts.append(_verdict(pgd, single, best_pgd, floor_acc, calm, streak))
        best_pgd = max(best_pgd, pgd)
    return verdicts


def _verdict(pgd: float, single: float, best_pgd: float, floor_acc: float, settled: bool, streak: int) -> Verdict:
    collapsed = settled and pgd < best_pgd - DROP
    if overfitting_gap(single, pgd):
        problem = (
            f"val single-step accuracy {single:.1%} but PGD-10 {pgd:.1%} at the training eps "
            f"(gap {single - pgd:.1%} > {GAP:.0%}, PGD below {RATIO:.0%} of it)"
        )
        return Verdict(False, streak >= PATIENCE or collapsed, problem, "catastrophic overfitting")
    if collapsed:
        problem = f"val PGD-10 accuracy fell to {pgd:.1%} from its best {best_pgd:.1%} (more than {DROP:.0%})"
        return Verdict(False, True, problem, "robustness collapsed")
    if pgd <= floor_acc:
        problem = f"val PGD-10 accuracy {pgd:.1%} is at most {floor_acc:.0%} (twice chance)"
        return Verdict(False, False, problem, "not robust")
    return Verdict(True, False, "")
