"""The catastrophic-overfitting rule (robustcnn.overfitting) at its edges, and the report check built on it."""

from __future__ import annotations

import pytest
from report_fixtures import make_results, set_accuracy

from robustcnn import overfitting
from robustcnn.overfitting import DROP, judge_log
from robustcnn.report import checks
from robustcnn.report.checks import Status
from robustcnn.report.load import normalize_results

FLOOR = overfitting.floor(10)


def row(fgsm: float, pgd: float, own: float | None = None) -> dict:
    values = {"epoch": 5, "val_fgsm_acc": fgsm, "val_pgd_acc": pgd}
    return values if own is None else {**values, "val_train_attack_acc": own}


def verdict(fgsm, pgd, own=None, best=0.0, settled=True, one_step=True):
    """The verdict on an epoch after one settled epoch with the same numbers (PGD accuracy `best` there)."""
    log = [row(fgsm, best or pgd, own), row(fgsm, pgd, own)]
    return judge_log(log, [settled, settled], floor_acc=FLOOR, one_step_training=one_step)[-1]


def test_floor_is_twice_chance():
    assert overfitting.floor(10) == pytest.approx(0.2) and overfitting.floor(2) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("fgsm", "pgd", "own", "sound", "overfitted"),
    [
        (0.55, 0.25, None, True, False),  # gap exactly GAP: still sound
        (0.56, 0.25, None, False, True),  # just beyond it, PGD below half of FGSM
        (0.90, 0.45, None, True, False),  # a 45-point gap, but PGD exactly half of FGSM: weak, not overfitted
        (0.90, 0.44, None, False, True),  # PGD below half
        (0.40, 0.25, 0.56, False, True),  # the method's own single step counts as well
        (0.82, 0.12, 0.84, False, True),  # the issue's FGSM-RS run: 82% vs 12%
        (0.30, 0.20, None, False, False),  # at the floor (twice chance): not robust, but no overfitting
        (0.30, 0.21, None, True, False),  # just above it
    ],
)
def test_judge_at_its_edges(fgsm, pgd, own, sound, overfitted):
    found = verdict(fgsm, pgd, own)
    assert (found.sound, found.overfitted) == (sound, overfitted), found
    assert bool(found.problem) is not sound


def test_own_attack_counts_only_for_single_step_methods():
    assert verdict(0.40, 0.40, own=0.90, one_step=False).sound  # a PGD method's own attack is multi-step


def test_one_epoch_with_the_gap_is_unsound_but_two_in_a_row_stop_training():
    first, second = judge_log([row(0.85, 0.12)] * 2, [True, True], floor_acc=FLOOR, one_step_training=True)
    assert not first.sound and not first.overfitted and first.what == "catastrophic overfitting"
    assert second.overfitted
    after_warm_up = judge_log([row(0.85, 0.12)] * 2, [False, True], floor_acc=FLOOR, one_step_training=True)
    assert not after_warm_up[-1].overfitted  # only settled epochs count towards the streak


def test_warm_up_epochs_are_never_called_overfitted():
    found = verdict(0.60, 0.02, settled=False)  # a model still on a small eps, judged at the full one
    assert not found.sound and not found.overfitted


def test_a_fall_from_the_best_is_overfitting_once_settled():
    assert verdict(0.60, 0.45, best=0.45 + DROP).sound  # a fall of exactly DROP is allowed
    fell = verdict(0.60, 0.44, best=0.45 + DROP)
    assert fell.overfitted and "fell to 44.0%" in fell.problem
    assert not verdict(0.60, 0.44, best=0.45 + DROP, settled=False).overfitted


# the report check on sweep results -------------------------------------------------------------

TRAINED = {"norm": "inf", "eps": 0.3}


def results(fgsm: float, pgd: float, n: int = 500, eps=(0.0, 0.1, 0.2, 0.3, 0.5)):
    frame = make_results(("adv",), ("fgsm", "pgd", "apgd-ce", "square"), eps, n=n)
    at = 0.3 if 0.3 in eps else 0.2
    frame = set_accuracy(set_accuracy(frame, "adv", "fgsm", at, fgsm), "adv", "pgd", at, pgd)
    return normalize_results(set_accuracy(frame, "adv", "apgd-ce", at, pgd))


def gap_check(frame, method="fgsm-rs", trained=TRAINED, reference=None):
    return checks.trained_attack_gap(frame, "adv", method, trained, reference)


def test_the_issues_overfitted_model_fails():
    check = gap_check(results(0.838, 0.118))
    assert check.status is Status.FAIL
    assert "fgsm 83.8%" in check.message and "catastrophic overfitting / gradient masking" in check.message


@pytest.mark.parametrize(
    ("fgsm", "pgd", "n", "expected"),
    [
        (0.50, 0.20, 500, Status.PASS),  # a gap of exactly 30 points
        (0.51, 0.20, 500, Status.FAIL),
        (0.90, 0.45, 500, Status.PASS),  # PGD exactly half of FGSM
        (0.90, 0.44, 500, Status.FAIL),
        (0.52, 0.20, 50, Status.WARN),  # 50 images: the intervals are too wide to call it
    ],
)
def test_gap_edges(fgsm, pgd, n, expected):
    assert gap_check(results(fgsm, pgd, n=n)).status is expected


def test_a_healthy_pgd_model_passes_and_the_pgd_side_is_judged_for_it():
    assert gap_check(results(0.814, 0.738), method="pgd").status is Status.PASS  # demo-adv's quick-suite numbers
    # PGD far above APGD (masking), FGSM not: the PGD side is what fails
    frame = set_accuracy(results(0.62, 0.80), "adv", "apgd-ce", 0.3, 0.35)
    check = gap_check(frame, method="pgd")
    assert check.status is Status.FAIL and "pgd 80.0%" in check.message and "apgd-ce 35.0%" in check.message


def test_models_from_elsewhere_warn_and_standard_ones_skip():
    frame = results(0.838, 0.118)
    foreign = gap_check(frame, method="", trained=None, reference={"inf": 0.3})
    assert foreign.status is Status.WARN and "single-step attacks are unreliable" in foreign.message
    assert gap_check(frame, method="standard").status is Status.SKIP
    assert gap_check(frame, method="", trained=None, reference=None).status is Status.SKIP


def test_training_eps_off_the_grid_uses_the_largest_eps_below_it():
    check = gap_check(results(0.9, 0.1, eps=(0.0, 0.1, 0.2, 0.5)))
    assert check.status is Status.FAIL and "eps 0.2" in check.message


def test_the_training_log_check_uses_the_same_rule():
    never_rose = [
        {"epoch": e, "eps": 0.3, "val_fgsm_acc": 0.80, "val_train_attack_acc": 0.83, "val_pgd_acc": 0.12}
        for e in range(1, 4)
    ]  # the issue's run: PGD accuracy never rose, so it never fell either
    check = checks.catastrophic_overfitting(never_rose, "adv", "fgsm-rs", attacked_epoch=3, eps_warmup=0)
    assert check.status is Status.FAIL and check.message.startswith("epoch 2: catastrophic overfitting")
    unknown_warm_up = checks.catastrophic_overfitting(never_rose, "adv", "fgsm-rs", attacked_epoch=3)
    assert unknown_warm_up.message.startswith("epoch 3:")  # epoch 1 may have ramped eps up: not counted
    warm_up = [{**r, "eps": 0.1 * r["epoch"]} for r in never_rose]  # eps reaches 0.3 in epoch 3 only
    assert checks.catastrophic_overfitting(warm_up, "adv", "fgsm-rs", attacked_epoch=2).status is Status.PASS
