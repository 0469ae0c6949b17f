"""Paired comparisons: the statistics against independent implementations, compare's matching and its CI gate, and
the report's table of every pair of models."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

import robustcnn
from robustcnn.cli import run_main
from robustcnn.compare import mcnemar_exact, newcombe_interval, paired_difference
from robustcnn.compare.__main__ import main as compare_main
from robustcnn.compare.paired import holm

SUITE = """
description = "two attacks, two radii"
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.1, 0.2]
[[attack]]
name = "pgd-linf"
type = "pgd"
norm = "inf"
eps = [0.1, 0.2]
steps = 5
"""
OTHER_SUITE = SUITE.replace("eps = [0.1, 0.2]\nsteps = 5", "eps = [0.1]\nsteps = 3")  # pgd-linf run differently


def flags(both: int, old_only: int, new_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example results of two models with the given 2x2 table, shuffled (order must not matter)."""
    old = np.array([1] * both + [1] * old_only + [0] * new_only + [0] * neither, dtype=bool)
    new = np.array([1] * both + [0] * old_only + [1] * new_only + [0] * neither, dtype=bool)
    order = np.random.default_rng(both + 7 * old_only).permutation(len(old))
    return old[order], new[order]


TABLES = [(50, 0, 0, 50), (99, 1, 0, 0), (0, 0, 1, 9), (40, 5, 1, 4), (300, 12, 3, 85), (10, 40, 44, 6), (0, 0, 0, 7)]


@pytest.mark.parametrize("table", TABLES)
def test_mcnemar_exact_p_equals_statsmodels(table):
    from statsmodels.stats.contingency_tables import mcnemar

    both, b, c, neither = table
    result = paired_difference(*flags(*table))
    expected = mcnemar([[both, b], [c, neither]], exact=True).pvalue if b + c else 1.0
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert (result.old_only, result.new_only, result.n) == (b, c, sum(table))
    assert result.difference == pytest.approx((c - b) / sum(table))


def newcombe_by_hand(both: int, b: int, c: int, neither: int) -> tuple[float, float]:
    """Newcombe's method 10 written out from the paper, on statsmodels' Wilson intervals."""
    from statsmodels.stats.proportion import proportion_confint

    n = both + b + c + neither
    p1, p2 = (both + c) / n, (both + b) / n  # new, old
    l1, u1 = proportion_confint(both + c, n, alpha=0.05, method="wilson")
    l2, u2 = proportion_confint(both + b, n, alpha=0.05, method="wilson")
    margins = (both + b) * (c + neither) * (both + c) * (b + neither)
    phi = (both * neither - b * c) / np.sqrt(margins) if margins else 0.0
    delta = np.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    epsilon = np.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return p1 - p2 - delta, p1 - p2 + epsilon


@pytest.mark.parametrize("table", TABLES)
def test_paired_interval_is_newcombes_method_10(table):
    low, high = newcombe_interval(*table)
    expected = newcombe_by_hand(*table)
    assert (low, high) == pytest.approx(expected, abs=1e-6)  # the Wilson intervals' z differs in the 7th digit
    assert low <= (table[2] - table[1]) / sum(table) <= high
    assert -1 <= low <= high <= 1


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    probabilities = np.array([0.55, 0.12, 0.06, 0.27])  # both, old only, new only, neither: true difference -0.06
    tables = rng.multinomial(200, probabilities, size=3000)
    covered = [low <= -0.06 <= high for low, high in (newcombe_interval(*t) for t in tables)]
    assert 0.935 <= np.mean(covered) <= 0.975


@pytest.mark.parametrize("p_values", [[], [0.2], [0.01, 0.04, 0.03, 0.5], [0.001, 0.001, 0.9, 0.02, 0.3, 1.0]])
def test_holm_adjustment_equals_statsmodels(p_values):
    from statsmodels.stats.multitest import multipletests

    expected = multipletests(p_values, method="holm")[1] if p_values else []
    assert holm(p_values) == pytest.approx(list(expected))


def test_mcnemar_has_no_evidence_without_disagreement():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 0) == 1.0  # one discordant example can never be significant
    assert mcnemar_exact(0, 10) == pytest.approx(2 * 0.5**10)


@pytest.fixture(scope="module")
def sweeps(tiny_runs, tmp_path_factory):
    """Both tiny models on the same 200 images (report on), the standard one again with pgd-linf run differently,
    and once more on other images (another seed)."""
    root = tmp_path_factory.mktemp("compare")
    (root / "suite.toml").write_text(SUITE)
    (root / "other.toml").write_text(OTHER_SUITE)
    std, adv = (str(run.path) for run in tiny_runs)
    robustcnn.sweep([std, adv], suite=str(root / "suite.toml"), n=200, out=str(root / "both"))
    robustcnn.sweep([std], suite=str(root / "other.toml"), n=200, out=str(root / "other"), report=False)
    robustcnn.sweep([std], suite=str(root / "other.toml"), n=60, seed=1, out=str(root / "seed1"), report=False)
    return root


def test_a_sweep_against_itself_differs_nowhere_and_passes_the_gate(sweeps, capsys):
    assert run_main(compare_main, [str(sweeps / "both"), str(sweeps / "both"), "--fail-if-drop", "0"]) == 0
    result = robustcnn.compare(sweeps / "both", sweeps / "both")
    assert len(result.rows) == 2 * 7  # per model: clean, 2 attacks x 2 eps, worst case x 2 eps
    assert all(r.result.difference == 0 and r.result.p_value == 1 for r in result.rows)
    assert not result.unmatched
    assert "gate passed" in capsys.readouterr().out


def test_a_standard_model_after_a_robust_one_fails_the_gate(sweeps, capsys):
    args = [str(sweeps / "both"), "--models", "adv", "std", "--fail-if-drop", "5"]
    assert run_main(compare_main, args) == 1
    error = capsys.readouterr().err.strip()
    assert "robust accuracy dropped" in error and len(error.splitlines()) == 1
    result = robustcnn.compare(sweeps / "both", models=("adv", "std"))
    results = pd.read_csv(sweeps / "both" / "results.csv")
    for row in result.rows:  # the paired counts are results.csv's
        for model, counted in (("adv", row.result.old_correct), ("std", row.result.new_correct)):
            mine = results[(results.model == model) & (results.kind == row.key.kind)]
            same = mine[mine.attack == row.key.attack]
            assert counted == same[np.isclose(same.eps, row.key.at)].n_correct.item()
    worst = [r for r in result.rows if r.key.kind == "worst-case" and r.key.at == 0.2][0]
    assert worst.result.difference < -0.05 and worst.significant(0.05) and worst.result.high < 0
    assert run_main(compare_main, [str(sweeps / "both"), "--models", "std", "adv", "--fail-if-drop", "5"]) == 0


def test_rows_run_differently_are_listed_not_compared(sweeps):
    result = robustcnn.compare(sweeps / "both", sweeps / "other")
    compared = {r.key.label for r in result.rows}
    assert compared == {"clean", "fgsm @ eps 0.1", "fgsm @ eps 0.2"}
    reasons = {u.what: u.reason for u in result.unmatched}
    assert reasons["pgd-linf @ eps 0.1"].startswith("other parameters")
    assert reasons["worst-case @ eps 0.1"].startswith("other parameters")  # over a pgd-linf run differently
    assert reasons["pgd-linf @ eps 0.2"] == "not in the new results"
    assert reasons["all rows"] == "model not in the new sweep"  # the adv model


def test_other_images_match_nothing_and_say_so(sweeps, capsys):
    assert run_main(compare_main, [str(sweeps / "other"), str(sweeps / "seed1"), "--fail-if-drop", "1"]) == 2
    error = capsys.readouterr().err
    assert "nothing matched" in error and "different images" in error


def test_results_that_disagree_with_their_cells_are_refused(sweeps, tmp_path, capsys):
    copy = tmp_path / "edited"
    shutil.copytree(sweeps / "other", copy)
    results = pd.read_csv(copy / "results.csv")
    results.loc[results.attack == "fgsm", "n_correct"] += 1
    results.to_csv(copy / "results.csv", index=False)
    assert run_main(compare_main, [str(sweeps / "other"), str(copy)]) == 2
    assert "the files disagree" in capsys.readouterr().err


def test_the_report_compares_every_pair_at_the_headline_eps(sweeps):
    folder = sweeps / "both"
    table = pd.read_csv(folder / "comparisons.csv")
    assert set(zip(table.old_model, table.new_model, strict=True)) == {("std", "adv")}
    assert set(table.attack) == {"clean", "fgsm", "pgd-linf", "worst-case"}
    assert set(table.eps) == {0.0, 0.2}  # mnist5k's 0.3 is closest to 0.2 on this grid
    full = robustcnn.compare(folder, models=("std", "adv")).frame()
    for _, row in table.iterrows():  # the same numbers as compare, only fewer rows (so Holm adjusts less)
        same = full[(full.attack == row.attack) & np.isclose(full.eps, row.eps)]
        assert same.difference.item() == pytest.approx(row.difference)
        assert same.p_value.item() == pytest.approx(row.p_value)
    summary = (folder / "summary.md").read_text()
    assert "### Paired comparisons" in summary and "**adv vs std**" in summary
    html = (folder / "report.html").read_text()
    assert 'id="comparisons"' in html and "worst-case @ eps 0.2" in html


def test_the_report_compares_each_model_with_a_baseline(sweeps, capsys):
    from robustcnn.report.__main__ import main as report_main

    folder = sweeps / "both"
    assert run_main(report_main, [str(folder), "--baseline", "nope"]) == 2
    assert "choose one of: std, adv" in capsys.readouterr().err
    robustcnn.report(folder, baseline="adv")
    table = pd.read_csv(folder / "comparisons.csv")
    assert set(zip(table.old_model, table.new_model, strict=True)) == {("adv", "std")}
    assert (table[table.attack == "worst-case"].difference < 0).all()


def test_a_baseline_that_is_not_a_model_stops_the_sweep_before_any_work(tiny_runs, tmp_path):
    from robustcnn.errors import UsageError

    with pytest.raises(UsageError, match="--baseline 'nope' is not a model of this sweep; choose one of: std"):
        robustcnn.sweep([str(tiny_runs[0].path)], suite="quick", n=10, baseline="nope", out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_an_examples_file_that_names_other_images_is_refused(sweeps, tmp_path, capsys):
    copy = shutil.copytree(sweeps / "other", tmp_path / "swapped")
    examples = next((copy / "examples").glob("*.npz"))
    with np.load(examples) as held:
        arrays = {name: held[name] for name in held.files}
    arrays["index"] = arrays["index"][::-1].copy()  # the same images in another order: flags would pair wrongly
    np.savez_compressed(examples, **arrays)
    assert run_main(compare_main, [str(sweeps / "other"), str(copy)]) == 2
    assert "lists other images than manifest.json's subset" in capsys.readouterr().err
