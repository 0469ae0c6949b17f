"""Sanity checks on a sweep's numbers (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; AutoAttack).

Each check is a pure function of the results table (and, for training, the per-epoch log) that returns a
`Check`: pass, warn, fail, or skip when the sweep has nothing to judge. A failing check explains a number,
it never hides one. docs/checks.md says, per check, what it means and what to do.

The report runs what is registered with `@check(name, title)` at the end of this file, each over one
`ModelView` (a model's rows and its manifest entry), in the order registered; `run_checks` is that loop. A new
check is one function over the view with that decorator, and its section in docs/checks.md.

Comparisons are paired (every attack ran on the same examples), but the thresholds use the 95% Wilson
intervals so that sampling noise alone never fails a check: "clearly above" means the higher value's
interval lies entirely above the other value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import permutations
from typing import Any

import pandas as pd

from robustcnn import overfitting as guard
from robustcnn.method_traits import MethodTraits, read_traits
from robustcnn.registry import Registry
from robustcnn.report import adaptive
from robustcnn.report.format import describe_point, format_eps, pct
from robustcnn.results import CHECKS_DOCS, EPS_TOLERANCE, Check, ModelEntry, RowKind, Status, chance_level

DOCS = CHECKS_DOCS
TINY = 1e-9  # float slack: a Wilson bound of 0% comes out as 1e-17, and must not count as above 0%
NOISE = 0.005  # accuracy differences up to half a percentage point are noise (1 example in 200), never a warning
STEPS_TOLERANCE = 0.01  # more steps or restarts may move accuracy by 1 point before the attack counts as unconverged
LARGE_LINF_EPS = 0.5  # from Linf eps 0.5 every image can reach uniform grey: a working attack leaves ~0 accuracy
NEAR_ZERO = 0.10  # "near zero": at most chance level for 10 classes
LARGE_EPS_FAIL = 0.30  # above this at a very large eps the attack (or the evaluation) is broken, not just weak
SINGLE_STEP_TYPES = ("fgsm",)  # attack types that take one gradient step
ITERATIVE = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "bim")  # attack types that take several gradient steps
STEPS_KEYS = ("steps", "max_iter", "n_iter", "nb_iter", "iterations")  # spellings of the step count in `params`
RESTARTS_KEYS = ("restarts", "n_restarts", "num_random_init", "random_restarts")


Row = Mapping[str, Any]  # one results row as a dict (iterating records is 50x faster than iterrows)
SEVERITY = {Status.FAIL: 3, Status.WARN: 2, Status.PASS: 1, Status.SKIP: 0}


def _check(name: str, status: Status, message: str, model: str | None) -> Check:
    return Check.of(name, status, message, model)


Results = pd.DataFrame | list[Row]  # a results table, or its records (what run_checks passes: faster)


def _rows(results: Results, model: str) -> list[Row]:
    if isinstance(results, pd.DataFrame):
        return results[results["model"] == model].to_dict("records")
    return [r for r in results if r["model"] == model]


def _eps_rows(rows: list[Row]) -> list[Row]:
    """Attack rows that have an eps (not patch), eps > 0: at eps 0 every attack is the clean model."""
    return [r for r in rows if r["kind"] == RowKind.ATTACK and not r["is_patch"] and r["eps"] > 0]


def _group(rows: list[Row], *keys: str) -> dict[Any, list[Row]]:
    groups: dict[Any, list[Row]] = {}
    for r in rows:
        groups.setdefault(r[keys[0]] if len(keys) == 1 else tuple(r[k] for k in keys), []).append(r)
    return groups


def _lowest(rows: list[Row], *keys: str) -> dict[Any, Row]:
    """Per key, the row with the lowest accuracy (the strongest attack there)."""
    return {key: min(group, key=lambda r: r["accuracy"]) for key, group in _group(rows, *keys).items()}


def _compare(higher: Row, reference: float) -> Status:
    """Is `higher` above `reference`? fail: its whole interval is; warn: by more than noise; else pass."""
    if higher["ci_low"] > reference + TINY:
        return Status.FAIL
    if higher["accuracy"] > reference + NOISE:
        return Status.WARN
    return Status.PASS


def _worst(findings: list[tuple[Status, float, str]]) -> tuple[Status, float, str]:
    """The most severe finding, the largest difference first among equals."""
    return max(findings, key=lambda f: (SEVERITY[f[0]], f[1]))


def _is_probe(row: Row) -> bool:
    return row["kind"] == RowKind.PROBE


def _judged(rows: list[Row]) -> list[Row]:
    """The rows the curve checks judge: an attack's probe rows where it has them (attacked afresh at every
    eps, correct or not: what nesting hides shows there), else its own rows; patch and worst case as they are."""
    probed = {r["attack"] for r in rows if _is_probe(r) and r["attack"] != "clean"}
    return [
        r
        for r in rows
        if (_is_probe(r) and r["attack"] != "clean")
        or (r["kind"] in (RowKind.ATTACK, RowKind.WORST_CASE) and r["attack"] not in probed)
    ]


def _where(row: Row) -> str:
    return describe_point(row) + (" (probe)" if _is_probe(row) else "")


def robust_le_clean(results: Results, model: str) -> Check:
    """Robust accuracy can't exceed clean accuracy: the attack may leave an example as it is.

    In nested mode an attack row counts clean-misclassified examples as broken, so only the probe rows
    (every example attacked, compared with the clean accuracy of the same examples) and patch rows can tell."""
    name, rows = "robust-le-clean", _rows(results, model)
    clean = [r for r in rows if r["kind"] == RowKind.CLEAN]
    probe_clean = [r for r in rows if _is_probe(r) and r["attack"] == "clean"]
    attacked = _judged(rows)
    if not clean or not attacked:
        return _check(name, Status.SKIP, "no clean row or no attack rows for this model", model)

    def reference(r: Row) -> float:
        return (probe_clean or clean)[-1]["accuracy"] if _is_probe(r) else clean[-1]["accuracy"]

    findings = [
        (_compare(r, reference(r)), r["accuracy"] - reference(r),
         f"{_where(r)}: robust {pct(r, ci=True)} is above clean {pct(reference(r))}")
        for r in attacked
    ]  # fmt: skip
    clean_acc = clean[-1]["accuracy"]
    status, _, message = _worst(findings)
    if status is Status.PASS:
        return _check(name, status, f"all {len(attacked)} robust accuracies <= clean {pct(clean_acc)}", model)
    above = sum(f[0] is not Status.PASS for f in findings)
    return _check(name, status, f"{message} ({above} of {len(attacked)} rows above clean)", model)


def monotone_in_eps(results: Results, model: str) -> Check:
    """Accuracy must not rise with eps (or patch scale): a larger ball contains the smaller one."""
    name = "monotone-eps"
    curves = _group(_judged(_rows(results, model)), "attack")
    findings, rising, total = [], 0, 0
    for attack, curve in curves.items():
        axis = "scale" if all(r["is_patch"] for r in curve) else "eps"
        if len(curve) < 2:
            continue
        total += 1
        found = _rises(attack, sorted(curve, key=lambda r: r[axis]), axis)
        rising += any(f[0] is not Status.PASS for f in found)
        findings += found
    if total == 0:
        return _check(name, Status.SKIP, "no attack with two or more eps values", model)
    status, _, message = _worst(findings)
    if status is Status.PASS:
        return _check(name, status, f"all {total} curves are non-increasing in eps (or patch scale)", model)
    return _check(name, status, f"{message} ({rising} of {total} curves rise)", model)


def _rises(attack: str, curve: list[Row], axis: str) -> list[tuple[Status, float, str]]:
    """Each point against the lowest accuracy at any smaller eps (a running minimum). A single-step attack's
    rise is at most a warning: one signed step of a larger eps can miss what a smaller one hit, which says the
    attack is weak there, not that the model or the evaluation is broken."""
    findings, lowest = [], curve[0]
    label = attack + (" (probe)" if _is_probe(curve[0]) else "")
    single_step = curve[0].get("attack_type") in SINGLE_STEP_TYPES
    for r in curve[1:]:
        message = (
            f"{label}: {pct(lowest)} at {axis} {format_eps(lowest[axis])} rises to {pct(r, ci=True)} "
            f"at {axis} {format_eps(r[axis])}"
        )
        status = _compare(r, lowest["accuracy"])
        if single_step and status is Status.FAIL:
            status, message = Status.WARN, f"{message} (a single step: weak at that eps, trust the iterative attacks)"
        findings.append((status, r["accuracy"] - lowest["accuracy"], message))
        lowest = r if r["accuracy"] < lowest["accuracy"] else lowest
    return findings


def iterative_beats_single_step(results: Results, model: str) -> Check:
    """PGD / APGD start where FGSM stops and take more steps: they must find at least as many examples."""
    name, rows = "iterative-vs-single-step", _eps_rows(_rows(results, model))
    fgsm = _lowest([r for r in rows if r["attack_type"] == "fgsm"], "norm", "eps")
    iterative = [r for r in rows if r["attack_type"] in ITERATIVE]
    if not fgsm or not iterative:
        return _check(name, Status.SKIP, "the suite lacks FGSM or an iterative attack (PGD, APGD)", model)
    findings = []
    for r in iterative:
        reference = fgsm.get((r["norm"], r["eps"]))
        if reference is not None:
            message = f"{r['attack']} {pct(r, ci=True)} is above FGSM {pct(reference)} at eps {format_eps(r['eps'])}"
            findings.append((_compare(r, reference["accuracy"]), r["accuracy"] - reference["accuracy"], message))
    if not findings:
        return _check(name, Status.SKIP, "FGSM and the iterative attacks share no eps", model)
    status, _, message = _worst(findings)
    if status is Status.PASS:
        return _check(name, status, f"iterative attacks <= FGSM at all {len(findings)} shared (attack, eps)", model)
    return _check(name, status, f"{message}: the iterative attack is weaker than one gradient step", model)


def _param(params: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = params.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _budget(params_json: str) -> tuple[float | None, float]:
    """(steps, restarts) from an attack's params JSON; restarts default to 1, unknown steps to None."""
    try:
        params = json.loads(params_json or "{}")
    except json.JSONDecodeError:
        params = {}
    params = params if isinstance(params, dict) else {}
    restarts = _param(params, RESTARTS_KEYS)
    return _param(params, STEPS_KEYS), 1.0 if restarts is None else restarts


def _stronger_pairs(rows: list[Row]) -> list[tuple[str, str]]:
    """(weaker, stronger) attack names of one type and norm whose budgets differ only upwards."""
    budgets = {r["attack"]: (r["attack_type"], r["norm"], _budget(r["params"])) for r in rows}
    pairs = []
    for weak, strong in permutations(budgets, 2):
        (type_a, norm_a, budget_a), (type_b, norm_b, budget_b) = budgets[weak], budgets[strong]
        if (type_a, norm_a) != (type_b, norm_b) or budget_a == budget_b:
            continue
        if all(a == b or (a is not None and b is not None and b >= a) for a, b in zip(budget_a, budget_b, strict=True)):
            pairs.append((weak, strong))
    return pairs


def steps_restarts_converged(results: Results, model: str) -> Check:
    """A converged attack gives about the same accuracy with more steps or restarts."""
    name = "steps-restarts"
    rows = [r for r in _eps_rows(_rows(results, model)) if r["box"] != "black"]
    pairs = _stronger_pairs(rows)
    if not pairs:
        return _check(name, Status.SKIP, "the suite has no attack run twice with different steps or restarts", model)
    at = {(r["attack"], r["eps"]): r for r in rows}
    findings = [
        _budget_finding(at[(weak, eps)], strong_row)
        for weak, strong in pairs
        for (attack, eps), strong_row in at.items()
        if attack == strong and (weak, eps) in at
    ]
    if not findings:
        return _check(name, Status.SKIP, "the attacks that differ in steps or restarts share no eps", model)
    status, _, message = _worst(findings)
    if status is Status.PASS:
        return _check(name, status, f"more steps/restarts change accuracy by <= {pct(STEPS_TOLERANCE)}", model)
    return _check(name, status, message, model)


def _budget_finding(weak: Row, strong: Row) -> tuple[Status, float, str]:
    change = strong["accuracy"] - weak["accuracy"]
    where = (
        f"at eps {format_eps(weak['eps'])}: {weak['attack']} {pct(weak)} -> {strong['attack']} {pct(strong, ci=True)}"
    )
    if strong["ci_low"] > weak["accuracy"] + TINY:
        return Status.FAIL, abs(change), f"{where}: more steps/restarts made the attack weaker (randomness or masking)"
    if change < -STEPS_TOLERANCE:
        return Status.WARN, abs(change), f"{where}: the weaker attack had not converged; report the stronger one"
    if change > STEPS_TOLERANCE:
        return Status.WARN, abs(change), f"{where}: more steps/restarts raised accuracy"
    return Status.PASS, abs(change), where


def black_box_not_stronger(results: Results, model: str) -> Check:
    """A black-box attack sees less than a white-box one; if it finds more, gradients are likely masked."""
    name, rows = "black-box-vs-white-box", _eps_rows(_rows(results, model))
    black = [r for r in rows if r["box"] == "black"]
    white = _lowest([r for r in rows if r["box"] == "white"], "norm", "eps")
    if not black or not white:
        return _check(name, Status.SKIP, "the suite lacks a black-box (e.g. Square) or a white-box attack", model)
    findings = []
    for r in black:
        w = white.get((r["norm"], r["eps"]))
        if w is None:
            continue
        status = Status.FAIL if r["ci_high"] < w["accuracy"] - TINY else Status.WARN
        status = status if r["accuracy"] < w["accuracy"] - NOISE else Status.PASS
        message = (
            f"{r['attack']} {pct(r, ci=True)} is below the best white-box {w['attack']} {pct(w)} "
            f"at eps {format_eps(r['eps'])}: gradient masking suspected"
        )
        findings.append((status, w["accuracy"] - r["accuracy"], message))
    if not findings:
        return _check(name, Status.SKIP, "black-box and white-box attacks share no eps", model)
    status, _, message = _worst(findings)
    if status is Status.PASS:
        return _check(name, status, f"black-box >= best white-box accuracy at all {len(findings)} shared eps", model)
    return _check(name, status, message, model)


def large_eps_near_zero(results: Results, model: str, image_size: int | None = None) -> Check:
    """At a huge eps (Linf >= 0.5; L2 >= half the image's diagonal) a working attack leaves ~0% accuracy."""
    name = "large-eps"
    rows = [r for r in _judged(_rows(results, model)) if not r["is_patch"] and r["kind"] != RowKind.WORST_CASE]
    large = [r for r in rows if _very_large(r, image_size)]
    if not large:
        return _check(name, Status.SKIP, f"the eps grid has no very large eps (Linf >= {LARGE_LINF_EPS})", model)
    largest = max(r["eps"] for r in large)
    r = min((r for r in large if r["eps"] == largest), key=lambda r: r["accuracy"])
    where = f"strongest attack {r['attack']} leaves {pct(r, ci=True)} at eps {format_eps(r['eps'])}"
    where += " (probe)" if _is_probe(r) else ""
    if r["accuracy"] <= NEAR_ZERO:
        return _check(name, Status.PASS, f"{where} (<= {pct(NEAR_ZERO)})", model)
    status = Status.WARN if r["accuracy"] <= LARGE_EPS_FAIL else Status.FAIL
    return _check(name, status, f"{where}; expected <= {pct(NEAR_ZERO)}: the attack is not working", model)


def _very_large(row: Row, image_size: int | None) -> bool:
    if row["norm"] == "inf":
        return row["eps"] >= LARGE_LINF_EPS
    return row["norm"] == "2" and image_size is not None and row["eps"] >= 0.5 * math.sqrt(image_size)


def clean_above_chance(results: Results, model: str, num_classes: int | None = None) -> Check:
    """Clean accuracy at chance level: wrong normalisation or input range, or labels in another order."""
    name = "clean-accuracy"
    clean = [r for r in _rows(results, model) if r["kind"] == RowKind.CLEAN]
    if not clean or not num_classes or num_classes < 2:
        return _check(name, Status.SKIP, "no clean row or no class count for this model", model)
    chance, floor = chance_level(num_classes)
    accuracy = clean[0]["accuracy"]
    if accuracy < floor:
        message = (
            f"clean accuracy {pct(clean[0], ci=True)} is at chance level ({pct(chance)} for {num_classes} classes): "
            "is the normalisation right (--normalize, --input-range)? robust accuracy of such a model means nothing"
        )
        return _check(name, Status.WARN, message, model)
    return _check(name, Status.PASS, f"clean accuracy {pct(clean[0])} is above chance ({pct(chance)})", model)


def catastrophic_overfitting(
    metrics: Any,
    model: str,
    method: str = "",
    attacked_epoch: int | None = None,
    eps_warmup: int | None = None,
    traits: Any = None,
) -> Check:
    """The training guard's rule (robustcnn.overfitting) on the log: an epoch at full eps whose single-step
    accuracy is far above its PGD accuracy, or whose PGD accuracy fell far from its best, overfitted.
    `eps_warmup`: the run's warm-up epochs; unknown, an epoch counts as at full eps when the one before ended
    there (a log's eps is each epoch's last). `traits`: the run's recorded method_traits (read_traits)."""
    name = "catastrophic-overfitting"
    rows = [r for r in metrics if _log_row(r)] if isinstance(metrics, list) else []
    if not rows:
        return _check(name, Status.SKIP, "no training log with val_fgsm_acc and val_pgd_acc for this model", model)
    full_eps = max(float(r.get("eps") or 0) for r in rows)
    known = read_traits(method, traits)
    if (known is not None and not known.guarded) or ("eps" in rows[0] and full_eps <= 0):
        return _check(name, Status.SKIP, "not adversarially trained", model)
    if isinstance(eps_warmup, int):
        settled = [int(r["epoch"]) > eps_warmup for r in rows]
    else:
        settled = [i > 0 and float(rows[i - 1].get("eps", full_eps) or 0) >= full_eps for i in range(len(rows))]
    verdicts = guard.judge_log(rows, settled, floor_acc=-1.0, one_step_training=_one_step(known))
    epochs = [int(r["epoch"]) for r in rows]
    stopped = [(e, v) for e, v in zip(epochs, verdicts, strict=True) if v.overfitted]
    if not stopped:
        return _check(name, Status.PASS, f"no epoch at full eps overfitted (training guard: {_guard_rule()})", model)
    epoch, verdict = stopped[0]
    message = f"epoch {epoch}: {verdict.what}: {verdict.problem}"
    bad = {e for e, v, calm in zip(epochs, verdicts, settled, strict=True) if calm and v.what in guard.OVERFITTING}
    if attacked_epoch in bad:
        message += f"; the attacked checkpoint (epoch {attacked_epoch}) is one of the overfitted epochs"
        return _check(name, Status.FAIL, message, model)
    return _check(name, Status.WARN, message, model)


def _log_row(row: Any) -> bool:
    return isinstance(row, dict) and all(
        isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool) and math.isfinite(row[k])
        for k in ("epoch", "val_fgsm_acc", "val_pgd_acc")
    )


def _one_step(traits: MethodTraits | None) -> bool:
    return traits is not None and traits.single_step


def _guard_rule() -> str:
    return (
        f"single-step accuracy never over {guard.GAP * 100:.0f} points above PGD-10 with PGD-10 below half of it "
        f"for {guard.PATIENCE} epochs, PGD-10 never {guard.DROP * 100:.0f} points below its best"
    )


def trained_attack_gap(
    results: Results,
    model: str,
    method: str = "",
    trained_against: Any = None,
    reference_eps: Any = None,
    traits: Any = None,
) -> Check:
    """An attack far weaker than a stronger one at the training eps means catastrophic overfitting or gradient
    masking: the model learnt to defeat that attack, not to be robust.

    The weak side is FGSM (the classic sign) and, for models robustcnn trained with a method whose `traits`
    (run.json's method_traits) are not single-step, also PGD; the strong side is the strongest white-box attack
    of another type that is not single-step. Models robustcnn trained: at the training norm and eps; fail.
    Models from elsewhere: at each norm's headline eps; warn, as their training is unknown. Methods that are
    not adversarial (standard, noise training): skip.
    """
    name = "trained-attack-gap"
    known = read_traits(method, traits)
    if known is not None and not known.adversarial:
        return _check(name, Status.SKIP, "not adversarially trained", model)
    rows = [r for r in _eps_rows(_rows(results, model)) if r["box"] == "white"]
    points, weak_types = _gap_points(method, trained_against, reference_eps, _one_step(known))
    findings = []
    for norm, eps in points:
        at = [r for r in rows if r["norm"] == norm and r["eps"] == _grid_eps(rows, norm, eps)]
        for weak_type in weak_types:
            weak = [r for r in at if r["attack_type"] == weak_type]
            strong = [r for r in at if r["attack_type"] not in (weak_type, *SINGLE_STEP_TYPES)]
            if weak and strong:
                weakest = max(weak, key=lambda r: r["accuracy"])
                findings.append(_gap_finding(weakest, min(strong, key=lambda r: r["accuracy"])))
    if not findings:
        message = f"the suite has no {' or '.join(weak_types)} beside a stronger white-box attack at that eps"
        return _check(name, Status.SKIP, message, model)
    status, _, message = _worst(findings)
    if status is Status.PASS:
        return _check(name, status, message, model)
    if not method:  # not trained here: the gap says single-step numbers are unreliable, not that training failed
        return _check(name, Status.WARN, f"{message}: single-step attacks are unreliable on this model", model)
    return _check(name, status, f"{message}: catastrophic overfitting / gradient masking", model)


def _gap_points(
    method: str, trained_against: Any, reference_eps: Any, single_step: bool
) -> tuple[list[tuple[str, float]], tuple]:
    """Where to compare, and the attack types that are the weak side."""
    if method and isinstance(trained_against, dict) and isinstance(trained_against.get("eps"), (int, float)):
        weak = ("fgsm",) if single_step else ("fgsm", "pgd")
        return [(str(trained_against.get("norm", "inf")), float(trained_against["eps"]))], weak
    if isinstance(reference_eps, dict):
        return [(str(k), float(v)) for k, v in reference_eps.items() if isinstance(v, (int, float))], ("fgsm",)
    return [], ("fgsm",)


def _grid_eps(rows: list[Row], norm: str, eps: float) -> float | None:
    """The grid's eps for `eps`: itself, else the largest below it (overfitting shows there too, if weaker)."""
    below = [r["eps"] for r in rows if r["norm"] == norm and r["eps"] <= eps + TINY]
    return max(below, default=None)


def _gap_finding(weak: Row, strong: Row) -> tuple[Status, float, str]:
    gap = weak["accuracy"] - strong["accuracy"]
    where = (
        f"{weak['attack']} {pct(weak, ci=True)} vs {strong['attack']} {pct(strong, ci=True)} "
        f"at eps {format_eps(weak['eps'])}: {gap * 100:.1f} points apart"
    )
    if not guard.overfitting_gap(weak["accuracy"], strong["accuracy"]):
        return Status.PASS, gap, f"{where} (overfitting: over {guard.GAP * 100:.0f}, the stronger below half)"
    significant = weak["ci_low"] > strong["ci_high"] + guard.GAP / 2  # the gap is far beyond sampling noise
    return (Status.FAIL if significant else Status.WARN), gap, f"{where}, {strong['attack']} below half"


def certified_le_attacked(results: Results, model: str) -> Check:
    """A certified accuracy is a lower bound, an attacked one an upper bound, on the same examples: an example
    proven robust at eps cannot be broken by any attack at eps or below. Any certified row above an attack
    row of its norm at the same eps is a bug in the bound or in the attack, never noise."""
    name, rows = "certified-le-attacked", _rows(results, model)
    proofs = [r for r in rows if r["kind"] == RowKind.CERTIFIED]
    attacked = [r for r in rows if r["kind"] in (RowKind.ATTACK, RowKind.WORST_CASE) and not r["is_patch"]]
    if not proofs:
        return _check(name, Status.SKIP, "no certified rows for this model (add an ibp or crown entry)", model)
    findings = []
    for proof in proofs:
        for row in attacked:
            if row["norm"] != proof["norm"] or abs(row["eps"] - proof["eps"]) > EPS_TOLERANCE or row["n"] != proof["n"]:
                continue
            above = proof["accuracy"] - row["accuracy"]
            status = Status.FAIL if above > TINY else Status.PASS
            findings.append((status, above, f"{describe_point(proof)}: certified {pct(proof)} is above "
                             f"{describe_point(row)}: {pct(row)}"))  # fmt: skip
    if not findings:
        return _check(name, Status.SKIP, "no attack row at a certified row's norm and eps", model)
    status, _, message = _worst(findings)
    if status is Status.PASS:
        return _check(
            name, status, f"all {len(proofs)} certified accuracies <= the attacks' ({len(findings)} pairs)", model
        )
    return _check(name, status, message, model)


def smoothing_noise_trained(
    results: Results, model: str, method: str = "", sigma: Any = None, traits: Any = None
) -> Check:
    """Randomized smoothing certifies the smoothed classifier, which is only as accurate as the model is on its
    noise: a model not trained with Gaussian noise at that sigma gets few and small certificates (not wrong)."""
    name = "smoothing-noise-trained"
    rows = [r for r in _rows(results, model) if r["kind"] == RowKind.SMOOTHED]
    if not rows:
        return _check(name, Status.SKIP, "no randomized smoothing rows for this model", model)
    used = sorted({float(json.loads(r["params"]).get("sigma", math.nan)) for r in rows})
    listed = ", ".join(f"{s:g}" for s in used)
    known = read_traits(method, traits)
    if known is None or not known.gaussian_noise:
        trained = f"trained with {method}" if method else "not trained by robustcnn"
        return _check(name, Status.WARN, (
            f"smoothing at sigma {listed} on a model {trained}, not with Gaussian noise: its smoothed "
            "classifier is rarely accurate on noise; train with --adv-method gaussian --sigma S"
        ), model)  # fmt: skip
    if isinstance(sigma, (int, float)) and any(abs(s - sigma) > TINY for s in used):
        message = f"smoothing at sigma {listed}, but the model trained at --sigma {sigma:g}"
        return _check(name, Status.WARN, message, model)
    return _check(name, Status.PASS, f"trained with Gaussian noise at sigma {listed}, the smoothing's", model)


def adaptive_attacks(results: Results, model: str, entry: ModelEntry) -> Check:
    """A defence the sweep's model checks found (randomness, masked gradients) makes every plain gradient attack
    weak against the model: an attack adapted to it (EOT, BPDA) must have run, or the robust accuracy is an upper
    bound that one may lower. `entry`: the model's manifest entry (its model checks, adaptations and draws)."""
    name = "adaptive"
    found = adaptive.evaluate(entry, adaptive.attacked(_rows(results, model)))
    if not found.checked:
        return _check(name, Status.SKIP, "no model checks in the manifest: randomness and masking unknown", model)
    if not found.defences:
        return _check(name, Status.SKIP, "the model checks found neither randomness nor masked gradients", model)
    if found.uncovered:
        unmet = "; ".join(defence.unmet for defence in found.uncovered)
        to_do = "; ".join(dict.fromkeys(defence.to_do for defence in found.uncovered))
        message = f"{unmet}: the robust accuracy is an upper bound that a stronger attack may lower; {to_do}"
        return _check(name, Status.FAIL, message, model)
    message = "; ".join(defence.met for defence in found.defences)
    if any(defence.name == adaptive.RANDOMNESS for defence in found.defences):
        draws = f"a majority of {found.draws} draws are right" if found.judging else "its one forward pass is right"
        message += f"; a prediction counts when {draws}"
    return _check(name, Status.PASS, message, model)


@dataclass(frozen=True)
class ModelView:
    """What every check reads about one model: its rows of the results and its manifest entry."""

    model: str  # the model id
    rows: list[Row]  # its rows of results.csv (normalised by report.load), in file order
    entry: ModelEntry  # its manifest entry; every field at its default when the manifest says nothing


@dataclass(frozen=True)
class Registered:
    name: str  # the check's id: its anchor in docs/checks.md, and the name of every Check it returns
    title: str  # the one-line claim the report lists it under
    run: Callable[[ModelView], Check]


CHECKS: Registry[Registered] = Registry("check")  # run, and listed in the report, in the order registered


def check(name: str, title: str) -> Callable[[Callable[[ModelView], Check]], Callable[[ModelView], Check]]:
    """Registers a check of one model: a function of its `ModelView` that returns a `Check` named `name`."""

    def add(function: Callable[[ModelView], Check]) -> Callable[[ModelView], Check]:
        CHECKS.register(name)(Registered(name, title, function))
        return function

    return add


def run_checks(results: pd.DataFrame, models: Mapping[str, ModelEntry | Mapping[str, Any]]) -> list[Check]:
    """Every registered check for every model (in `models` order), then the sweep's checks of that model.
    `models`: each model's manifest entry, by id (an entry as manifest.json holds it is read as one)."""
    rows = _group(results.to_dict("records"), "model")
    checks = []
    for model, entry in models.items():
        entry = entry if isinstance(entry, ModelEntry) else ModelEntry.from_json(entry, model)
        view = ModelView(model, rows.get(model, []), entry)
        checks += [_guarded(registered, view) for registered in CHECKS.entries()]
        checks += entry.model_checks or ()
    return checks


def _guarded(registered: Registered, view: ModelView) -> Check:
    """A check that trips over unexpected data says so instead of taking the whole report down."""
    try:
        return registered.run(view)
    except Exception as error:  # reported as a warning, never swallowed silently
        return _check(registered.name, Status.WARN, f"check could not run: {type(error).__name__}: {error}", view.model)


# --- the registry: each entry reads what its check needs from the view --------------------------------------
@check("clean-accuracy", "clean accuracy is above chance level")
def _clean_accuracy(view: ModelView) -> Check:
    return clean_above_chance(view.rows, view.model, view.entry.num_classes)


@check("robust-le-clean", "robust accuracy is at most clean accuracy")
def _robust_le_clean(view: ModelView) -> Check:
    return robust_le_clean(view.rows, view.model)


@check("monotone-eps", "accuracy does not rise with eps")
def _monotone_eps(view: ModelView) -> Check:
    return monotone_in_eps(view.rows, view.model)


@check("iterative-vs-single-step", "iterative attacks are at least as strong as FGSM")
def _iterative_vs_single_step(view: ModelView) -> Check:
    return iterative_beats_single_step(view.rows, view.model)


@check("steps-restarts", "more steps or restarts change little")
def _steps_restarts(view: ModelView) -> Check:
    return steps_restarts_converged(view.rows, view.model)


@check("black-box-vs-white-box", "black-box attacks are not stronger than white-box ones")
def _black_box_vs_white_box(view: ModelView) -> Check:
    return black_box_not_stronger(view.rows, view.model)


@check("adaptive", "a defence the model checks found met an attack adapted to it (EOT, BPDA)")
def _adaptive(view: ModelView) -> Check:
    return adaptive_attacks(view.rows, view.model, view.entry)


@check("certified-le-attacked", "certified accuracy (a lower bound) is at most every attack's (upper bounds)")
def _certified_le_attacked(view: ModelView) -> Check:
    return certified_le_attacked(view.rows, view.model)


@check("large-eps", "accuracy is near zero at a very large eps")
def _large_eps(view: ModelView) -> Check:
    return large_eps_near_zero(view.rows, view.model, view.entry.image_size)


@check("catastrophic-overfitting", "no catastrophic overfitting in training")
def _catastrophic_overfitting(view: ModelView) -> Check:
    entry = view.entry
    return catastrophic_overfitting(
        entry.training_metrics, view.model, entry.method, entry.attacked_epoch, entry.eps_warmup, entry.method_traits
    )


@check("trained-attack-gap", "no attack is far weaker than a stronger one at the training eps")
def _trained_attack_gap(view: ModelView) -> Check:
    entry = view.entry
    reference = entry.headline.reference_eps if entry.headline is not None else None
    return trained_attack_gap(
        view.rows, view.model, entry.method, entry.trained_against, reference, entry.method_traits
    )


@check("smoothing-noise-trained", "randomized smoothing runs on a model trained with its noise")
def _smoothing_noise_trained(view: ModelView) -> Check:
    entry = view.entry
    return smoothing_noise_trained(view.rows, view.model, entry.method, entry.noise_sigma, entry.method_traits)


def titles() -> dict[str, str]:
    """Every registered check's one-line claim, by name, in the report's order."""
    return {registered.name: registered.title for registered in CHECKS.entries()}


def counts(checks: list[Check]) -> dict[str, int]:
    return {status.value: sum(c.status is status for c in checks) for status in Status}
