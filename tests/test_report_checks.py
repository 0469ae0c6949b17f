"""Each sanity check on hand-made result tables: a clean table passes, a table that breaks the property fails
(or warns, where the break is within what the intervals can tell apart)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from report_fixtures import make_results, set_accuracy, training_metrics

from robustcnn.report import checks
from robustcnn.report.checks import Status
from robustcnn.report.load import normalize_results

ROOT = Path(__file__).resolve().parents[1]
ALL_ATTACKS = ("fgsm", "pgd", "pgd-50", "apgd-ce", "square", "patch")
EPS = (0.0, 0.1, 0.2, 0.3, 0.5)  # 0.5: a very large Linf eps, so `large-eps` applies


def table(edit=None, attacks=ALL_ATTACKS, eps=EPS):
    frame = make_results(("std", "adv"), attacks, eps)
    return normalize_results(edit(frame) if edit else frame)


def accuracy_of(frame, model, attack, eps):
    rows = frame[(frame["model"] == model) & (frame["attack"] == attack) & (frame["eps"] == eps)]
    return float(rows["accuracy"].iloc[0])


DIGITS = [str(d) for d in range(10)]


def models(**entries):
    return {
        "std": {"method": "standard", "class_names": DIGITS},
        "adv": {"method": "pgd", "class_names": DIGITS, "trained_against": {"norm": "inf", "eps": 0.3}, **entries},
    }


def test_clean_table_passes_every_check():
    found = checks.run_checks(table(), models(training_metrics=training_metrics()))
    statuses = {(c.name, c.model): c.status for c in found}
    assert statuses.pop(("catastrophic-overfitting", "std")) is Status.SKIP  # standard training
    assert statuses.pop(("trained-attack-gap", "std")) is Status.SKIP
    for model in ("std", "adv"):  # no ibp, crown or smoothing rows in this table, and no model checks
        assert statuses.pop(("certified-le-attacked", model)) is Status.SKIP
        assert statuses.pop(("smoothing-noise-trained", model)) is Status.SKIP
        assert statuses.pop(("adaptive", model)) is Status.SKIP
    assert set(statuses.values()) == {Status.PASS}, [c for c in found if c.status is not Status.PASS]
    assert {c.name for c in found} == set(checks.CHECKS.names())


@pytest.mark.parametrize(
    ("attack", "eps", "value", "expected"),
    [
        ("pgd", 0.1, 0.999, Status.FAIL),  # its interval [98.9, 100] lies above clean 98.0%
        ("worst-case", 0.0, 0.99, Status.WARN),  # above clean, but within the interval
        ("patch", 0.05, 0.995, Status.FAIL),  # patch rows too
    ],
)
def test_robust_above_clean(attack, eps, value, expected):
    frame = table(lambda f: set_accuracy(f, "adv", attack, eps, value))
    check = checks.robust_le_clean(frame, "adv")
    assert check.status is expected
    assert "above clean 98.0%" in check.message and attack in check.message
    assert checks.robust_le_clean(frame, "std").status is Status.PASS


@pytest.mark.parametrize(("value", "expected"), [(0.70, Status.FAIL), (0.545, Status.WARN), (0.532, Status.PASS)])
def test_accuracy_rising_with_eps(value, expected):
    frame = table(lambda f: set_accuracy(f, "adv", "square", 0.3, value))  # square at 0.2: 53.0%
    check = checks.monotone_in_eps(frame, "adv")
    assert check.status is expected
    if expected is not Status.PASS:
        assert "square: 53.0% at eps 0.2 rises to" in check.message
        assert "1 of 7 curves rise" in check.message  # 6 attacks + the worst case


def test_rise_is_measured_against_the_lowest_smaller_eps():
    # 0.1 -> 0.2 falls, 0.2 -> 0.3 rises above 0.2 but stays below 0.1: still a rise
    between = (accuracy_of(table(), "adv", "pgd", 0.1) + accuracy_of(table(), "adv", "pgd", 0.2)) / 2
    frame = table(lambda f: set_accuracy(f, "adv", "pgd", 0.3, between))
    assert accuracy_of(frame, "adv", "pgd", 0.2) < between < accuracy_of(frame, "adv", "pgd", 0.1)
    assert checks.monotone_in_eps(frame, "adv").status is Status.FAIL


def test_a_rising_fgsm_curve_is_only_a_warning():
    frame = table(lambda f: set_accuracy(f, "adv", "fgsm", 0.3, 0.70))  # clearly above FGSM at 0.2
    check = checks.monotone_in_eps(frame, "adv")
    assert check.status is Status.WARN and "a single step: weak at that eps" in check.message


def test_patch_accuracy_rising_with_scale():
    frame = table(lambda f: set_accuracy(f, "adv", "patch", 0.3, 0.95))
    check = checks.monotone_in_eps(frame, "adv")
    assert check.status is Status.FAIL and "at scale 0.3" in check.message


@pytest.mark.parametrize(("value", "expected"), [(0.75, Status.FAIL), (0.63, Status.WARN)])
def test_iterative_weaker_than_fgsm(value, expected):
    frame = table(lambda f: set_accuracy(f, "adv", "pgd", 0.2, value))  # FGSM at 0.2: 61.8%
    check = checks.iterative_beats_single_step(frame, "adv")
    assert check.status is expected
    assert "pgd" in check.message and "above FGSM 61.8% at eps 0.2" in check.message


def test_iterative_check_skips_without_fgsm():
    assert checks.iterative_beats_single_step(table(attacks=("pgd", "square")), "adv").status is Status.SKIP


@pytest.mark.parametrize(
    ("value", "expected", "words"),
    [
        (0.56, Status.FAIL, "made the attack weaker"),  # 50 steps clearly above 10 steps (45.6%)
        (0.42, Status.WARN, "had not converged"),  # 50 steps 3.6 points below 10 steps
        (0.47, Status.WARN, "raised accuracy"),
    ],
)
def test_more_steps_change_accuracy(value, expected, words):
    frame = table(lambda f: set_accuracy(f, "adv", "pgd-50", 0.2, value))
    check = checks.steps_restarts_converged(frame, "adv")
    assert check.status is expected
    assert words in check.message and "pgd 45.6% -> pgd-50" in check.message


def test_restarts_are_read_from_params():
    def more_restarts(frame):
        frame = frame.copy()
        frame.loc[frame["attack"] == "pgd-50", "params"] = '{"steps":10,"num_random_init":5}'
        return set_accuracy(frame, "adv", "pgd-50", 0.2, 0.40)

    assert checks.steps_restarts_converged(table(more_restarts), "adv").status is Status.WARN


def test_steps_check_skips_without_a_pair():
    check = checks.steps_restarts_converged(table(attacks=("fgsm", "pgd", "apgd-ce")), "adv")
    assert check.status is Status.SKIP


@pytest.mark.parametrize(("value", "expected"), [(0.30, Status.FAIL), (0.43, Status.WARN)])
def test_black_box_stronger_than_white_box(value, expected):
    frame = table(lambda f: set_accuracy(f, "adv", "square", 0.2, value))  # best white-box there: apgd-ce 43.8%
    check = checks.black_box_not_stronger(frame, "adv")
    assert check.status is expected
    assert "below the best white-box apgd-ce 43.8%" in check.message and "masking" in check.message


def test_black_box_check_skips_without_black_box():
    assert checks.black_box_not_stronger(table(attacks=("fgsm", "pgd")), "adv").status is Status.SKIP


@pytest.mark.parametrize(("value", "expected"), [(0.6, Status.FAIL), (0.2, Status.WARN), (0.05, Status.PASS)])
def test_accuracy_not_near_zero_at_large_eps(value, expected):
    def stuck(frame):
        for attack in ("fgsm", "pgd", "pgd-50", "apgd-ce", "square", "worst-case"):
            frame = set_accuracy(frame, "adv", attack, 0.5, value)
        return frame

    check = checks.large_eps_near_zero(table(stuck), "adv")
    assert check.status is expected
    assert "at eps 0.5" in check.message


def test_large_eps_skips_without_a_large_eps():
    assert checks.large_eps_near_zero(table(eps=(0, 0.1, 0.3)), "adv").status is Status.SKIP


def test_large_l2_eps_needs_the_image_size():
    def as_l2(frame):
        frame = frame.copy()
        frame.loc[frame["kind"] != "clean", "norm"] = "2"
        return frame

    frame = table(as_l2, attacks=("pgd",), eps=(0, 1.0, 14.0))  # 14 = 0.5 * sqrt(784)
    assert checks.large_eps_near_zero(frame, "adv").status is Status.SKIP
    assert checks.large_eps_near_zero(frame, "adv", image_size=784).status is Status.PASS


def test_catastrophic_overfitting():
    collapsed = training_metrics(epochs=8, collapse_at=5)
    check = checks.catastrophic_overfitting(collapsed, "adv", "fgsm-rs")
    assert check.status is Status.WARN
    assert re.search(
        r"epoch 5: catastrophic overfitting: val single-step accuracy 95\.0% but PGD-10 2\.0%", check.message
    )
    assert checks.catastrophic_overfitting(collapsed, "adv", "fgsm-rs", attacked_epoch=8).status is Status.FAIL
    assert checks.catastrophic_overfitting(collapsed, "adv", "fgsm-rs", attacked_epoch=3).status is Status.WARN
    assert checks.catastrophic_overfitting(training_metrics(), "adv", "pgd").status is Status.PASS
    assert checks.catastrophic_overfitting(training_metrics(adv=False), "std", "standard").status is Status.SKIP
    assert checks.catastrophic_overfitting(None, "adv").status is Status.SKIP
    assert checks.catastrophic_overfitting([{"epoch": 1, "val_acc": 0.9}], "adv").status is Status.SKIP


def test_last_weights_make_collapse_a_failure():
    log = training_metrics(epochs=6, collapse_at=4)
    found = checks.run_checks(table(), models(training_metrics=log, weights="last"))
    (check,) = [c for c in found if c.name == "catastrophic-overfitting" and c.model == "adv"]
    assert check.status is Status.FAIL and "epoch 6" in check.message


def test_model_checks_from_the_manifest_are_shown():
    entry = {
        "model_checks": [
            {"name": "logits", "status": "pass", "message": "outputs are logits", "link": "docs/x.md#logits"},
            {"name": "deterministic", "status": "maybe", "message": "odd"},
            "not a dict",
        ]
    }
    found = checks.run_checks(table(), models(**entry))
    mine = [c for c in found if c.name in ("logits", "deterministic")]
    assert [(c.status, c.link, c.model) for c in mine] == [
        (Status.PASS, "docs/x.md#logits", "adv"),
        (Status.WARN, "docs/checks.md#deterministic", "adv"),
    ]
    assert "unknown status 'maybe'" in mine[1].message


def test_a_check_that_crashes_becomes_a_warning(monkeypatch):
    def broken(results, model):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(checks, "monotone_in_eps", broken)  # what the registered monotone-eps check calls
    found = checks.run_checks(table(), models())
    crashed = [c for c in found if c.name == "monotone-eps"]
    assert all(c.status is Status.WARN and "ZeroDivisionError: boom" in c.message for c in crashed)


def test_check_is_frozen_and_serialises():
    check = checks.robust_le_clean(table(), "adv")
    with pytest.raises(AttributeError):
        check.status = Status.FAIL
    assert check.to_dict() == {
        "name": "robust-le-clean",
        "status": "pass",
        "message": check.message,
        "link": "docs/checks.md#robust-le-clean",
        "model": "adv",
    }


def test_every_check_is_explained_in_the_docs():
    docs = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (\S+)$", docs, flags=re.M))
    assert set(checks.CHECKS.names()) <= headings


@pytest.mark.parametrize(("accuracy", "status"), [(0.12, Status.WARN), (0.18, Status.WARN), (0.20, Status.PASS)])
def test_clean_accuracy_at_chance_warns(accuracy, status):
    """10 classes: chance is 10%, and below 19% (chance + 10% of the way to 100%) the model counts as at chance."""

    edit = lambda frame: set_accuracy(frame, "adv", "clean", None, accuracy)  # noqa: E731
    found = {(c.name, c.model): c for c in checks.run_checks(table(edit), models())}
    check = found[("clean-accuracy", "adv")]
    assert check.status is status, check.message
    assert found[("clean-accuracy", "std")].status is Status.PASS
    if status is Status.WARN:
        assert "chance level" in check.message and "--normalize" in check.message


def test_clean_accuracy_needs_the_class_count():
    found = {(c.name, c.model): c for c in checks.run_checks(table(), {"adv": {}, "std": {}})}
    assert found[("clean-accuracy", "adv")].status is Status.SKIP


def _with_certified(accuracy_at: dict[float, float]):
    """The clean table plus ibp rows for the adv model at the given eps (accuracy per eps), n as the attacks'."""
    from report_fixtures import row

    def edit(frame):
        import pandas as pd

        rows = [
            row("adv", "certified", "ibp", value, 500, eps=eps, attack_type="ibp", box="white", norm="inf")
            for eps, value in accuracy_at.items()
        ]
        return pd.concat([frame, pd.DataFrame(rows).reindex(columns=frame.columns)], ignore_index=True)

    return table(edit)


def test_certified_below_every_attack_passes_and_above_one_fails():
    """A lower bound above an upper bound on the same images is a bug: fail, however small the excess."""
    results = table()
    pgd = accuracy_of(results, "adv", "pgd", 0.1)
    below = checks.certified_le_attacked(_with_certified({0.1: pgd - 0.1, 0.2: 0.0}), "adv")
    assert below.status is Status.PASS and "2 certified" in below.message
    lowest = min(accuracy_of(results, "adv", a, 0.1) for a in ("fgsm", "pgd", "pgd-50", "apgd-ce", "square"))
    above = checks.certified_le_attacked(_with_certified({0.1: lowest + 0.002}), "adv")  # one image in 500
    assert above.status is Status.FAIL and "ibp at eps 0.1" in above.message


def test_a_new_check_is_one_registered_function(monkeypatch):
    """What docs/architecture.md shows: a function of the model's view, registered with its name and title."""
    from robustcnn.registry import Registry
    from robustcnn.results import Check

    monkeypatch.setattr(checks, "CHECKS", Registry("check"))  # only the new check, and the registry restored after

    @checks.check("has-rows", "every model has rows in the results")
    def has_rows(view: checks.ModelView) -> Check:
        status = Status.PASS if view.rows else Status.FAIL
        return Check.of("has-rows", status, f"{len(view.rows)} rows, {view.entry.method or 'not'} trained", view.model)

    found = checks.run_checks(table(), {**models(), "gone": {}})
    assert [(c.name, c.model, c.status) for c in found] == [
        ("has-rows", "std", Status.PASS),
        ("has-rows", "adv", Status.PASS),
        ("has-rows", "gone", Status.FAIL),
    ]
    assert found[1].message.endswith("pgd trained") and found[1].link == "docs/checks.md#has-rows"
