"""The sweep end to end on tiny trained models: properties of the numbers, nesting, resume, gates, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import robustcnn
from robustcnn.cli import run_main
from robustcnn.results import COLUMNS, wilson_interval
from robustcnn.sweep import __main__ as sweep_cli
from robustcnn.sweep import cells, runner
from robustcnn.sweep.store import CellStore

PGD_SUITE = """
description = "test suite"
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.05, 0.1, 0.2, 0.3]
[[attack]]
name = "pgd-linf"
type = "pgd"
norm = "inf"
eps = [0.05, 0.1, 0.2, 0.3]
steps = 10
"""

DETERMINISTIC_SUITE = PGD_SUITE + "random_start = false\n"


@pytest.fixture
def suite_file(tmp_path):
    def write(text: str = PGD_SUITE, name: str = "suite.toml"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@pytest.fixture(scope="module")
def naive_results(tiny_runs, tmp_path_factory):
    """Both tiny models, every example attacked at every eps (so monotonicity is a real property)."""
    out = tmp_path_factory.mktemp("sweep") / "naive"
    suite = tmp_path_factory.mktemp("suite") / "pgd.toml"
    suite.write_text(PGD_SUITE)
    runs = [r.path for r in tiny_runs]
    return robustcnn.sweep(runs, suite=str(suite), n=200, out=str(out), naive=True, report=False), out


def accuracy(results, model, attack, eps):
    rows = results[(results.model == model) & (results.attack == attack) & (results.kind != "probe")]
    return rows[np.isclose(rows.eps.astype(float), eps)].accuracy.item()


def test_results_are_tidy_with_intervals_and_a_worst_case(naive_results):
    results, out = naive_results
    assert list(results.columns) == COLUMNS
    assert set(results.kind) == {"clean", "attack", "worst-case", "probe"}
    probes = results.kind == "probe"
    assert (~probes).sum() == 2 * (1 + 4 + 4 + 4) and probes.sum() == 2 * (1 + 4 + 4)  # clean + 2 attacks x 4 eps
    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == len(results) and not csv.duplicated(["model", "kind", "attack", "eps"]).any()
    for _, row in results.iterrows():
        assert (row.ci_low, row.ci_high) == pytest.approx(wilson_interval(row.n_correct, row.n))
        assert row.ci_low <= row.accuracy <= row.ci_high and row.n == (50 if row.kind == "probe" else 200)
    assert (results.checkpoint_sha256.str.len() == 64).all()


def test_adversarial_model_is_far_more_robust(naive_results):
    results, _ = naive_results
    assert accuracy(results, "adv", "pgd-linf", 0.2) > accuracy(results, "std", "pgd-linf", 0.2) + 0.3


def test_accuracy_never_rises_with_eps(naive_results):
    results, _ = naive_results
    for (model, attack), rows in results[results.kind.isin(["attack", "worst-case"])].groupby(["model", "attack"]):
        values = rows.sort_values("eps")
        slack = (values.ci_high - values.ci_low).max() / 2  # naive mode: each eps is an independent run
        clean = results[(results.model == model) & (results.kind == "clean")].accuracy.item()
        assert values.accuracy.iloc[0] <= clean
        assert (np.diff(values.accuracy.to_numpy()) <= slack).all(), (model, attack)


def test_fgsm_is_never_much_stronger_than_pgd(naive_results):
    results, _ = naive_results
    for model in ("std", "adv"):
        for eps in (0.05, 0.1, 0.2, 0.3):
            fgsm = results[
                (results.model == model)
                & (results.attack == "fgsm")
                & (results.kind == "attack")
                & np.isclose(results.eps, eps)
            ]
            pgd_acc = accuracy(results, model, "pgd-linf", eps)
            assert fgsm.accuracy.item() >= pgd_acc - (fgsm.ci_high.item() - fgsm.ci_low.item()), (model, eps)


def worst_case_from_cells(results: pd.DataFrame, out, model: str, eps: float) -> int:
    """Examples correct clean and under every attack row at any eps <= eps, counted from the cells' flags."""
    store = CellStore(out)
    rows = results[results.model == model]
    flags = store.load(rows[rows.kind == "clean"].cell.item()).flags[0].copy()
    for _, row in rows[(rows.kind == "attack") & (rows.eps <= eps + 1e-9)].iterrows():
        cell = store.load(row.cell)
        flags &= cell.flags[[v["eps"] for v in cell.values].index(row.eps)]
    return int(flags.sum())


def test_worst_case_is_the_and_over_attacks_at_every_smaller_eps(naive_results):
    """Per example, not per row: an example counts only if no attack broke it at this eps or a smaller one."""
    results, out = naive_results
    for model in ("std", "adv"):
        rows = results[results.model == model]
        attacks = rows[rows.kind == "attack"]
        for _, worst in rows[rows.kind == "worst-case"].iterrows():
            assert worst.n_correct == worst_case_from_cells(results, out, model, worst.eps)
            assert worst.accuracy <= attacks[attacks.eps <= worst.eps + 1e-9].accuracy.min()
        below = rows[rows.kind == "worst-case"].set_index("eps").n_correct
        assert (below.diff().dropna() <= 0).all()  # never rises with eps


def test_worst_case_nests_across_attacks_with_different_grids(tiny_runs, tmp_path, suite_file):
    """PGD at 0.1 only, FGSM at 0.1 and 0.11: what PGD broke at 0.1 is broken at 0.11 too (the 0.1 ball lies
    inside), although PGD did not run there. Grouping rows by exact eps reported 229/360 for 226/360."""
    suite = suite_file(
        '[[attack]]\nname = "pgd"\ntype = "pgd"\nnorm = "inf"\neps = [0.1]\nsteps = 10\n'
        '[[attack]]\nname = "fgsm"\ntype = "fgsm"\nnorm = "inf"\neps = [0.1, 0.11]\n'
    )
    out = tmp_path / "grids"
    results = robustcnn.sweep([tiny_runs[1].path], suite=suite, n=150, out=str(out), report=False)
    model = tiny_runs[1].path.name
    worst = results[(results.kind == "worst-case") & np.isclose(results.eps, 0.11)].iloc[0]
    assert worst.accuracy <= accuracy(results, model, "pgd", 0.1)
    assert worst.n_correct == worst_case_from_cells(results, out, model, 0.11)
    assert json.loads(worst.params)["attacks"] == ["pgd", "fgsm"]


def test_nested_reuse_gives_the_same_accuracies_as_naive(tiny_runs, tmp_path, suite_file, monkeypatch):
    suite = suite_file(DETERMINISTIC_SUITE)
    runs = [tiny_runs[1].path]
    attacked = {"nested": 0, "naive": 0}  # images handed to attacks: the work nesting saves, counted not timed
    original = cells.in_batches

    def sweep(mode: str) -> pd.DataFrame:
        def counting(function, x, *args, **kwargs):
            attacked[mode] += len(x)
            return original(function, x, *args, **kwargs)

        monkeypatch.setattr(cells, "in_batches", counting)
        return robustcnn.sweep(runs, suite=suite, n=120, out=str(tmp_path / mode), naive=mode == "naive", report=False)

    nested, naive = sweep("nested"), sweep("naive")
    pd.testing.assert_series_equal(nested.accuracy, naive.accuracy)
    assert 0 < attacked["nested"] < attacked["naive"]


def test_same_seed_same_results_and_a_rerun_resumes_instantly(tiny_runs, tmp_path, suite_file):
    suite, runs = suite_file(), [r.path for r in tiny_runs]
    first = robustcnn.sweep(runs, suite=suite, n=100, out=str(tmp_path / "a"), report=False)
    again = robustcnn.sweep(runs, suite=suite, n=100, out=str(tmp_path / "a"), report=False)
    fresh = robustcnn.sweep(runs, suite=suite, n=100, out=str(tmp_path / "b"), report=False)
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), fresh.drop(columns="seconds"))


def test_interrupted_sweep_resumes_without_lost_or_duplicated_rows(tiny_runs, tmp_path, suite_file, monkeypatch):
    suite, runs = suite_file(), [r.path for r in tiny_runs]
    whole = robustcnn.sweep(runs, suite=suite, n=100, out=str(tmp_path / "whole"), report=False)
    original, done = runner.CellStore.save, []

    def save_then_stop(self, key, cell):  # Ctrl-C while the sixth cell is in flight
        if len(done) == 5:
            raise KeyboardInterrupt
        original(self, key, cell)
        done.append(key)

    monkeypatch.setattr(runner.CellStore, "save", save_then_stop)
    out = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        robustcnn.sweep(runs, suite=suite, n=100, out=str(out), report=False)
    partial = pd.read_csv(out / "results.csv")
    assert len(partial) == 5 and not partial.duplicated("cell").any()
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    resumed = robustcnn.sweep(runs, suite=suite, n=100, out=str(out), report=False)
    pd.testing.assert_frame_equal(whole.drop(columns="seconds"), resumed.drop(columns="seconds"))
    assert (resumed.set_index("cell").loc[partial.cell, "seconds"].to_numpy() == partial.seconds.to_numpy()).all()


def test_changed_attack_config_recomputes_only_stale_cells(tiny_runs, tmp_path, suite_file):
    runs, out = [tiny_runs[0].path], str(tmp_path / "out")
    first = robustcnn.sweep(runs, suite=suite_file(), n=60, out=out, report=False)
    changed = robustcnn.sweep(
        runs, suite=suite_file(PGD_SUITE.replace("steps = 10", "steps = 3")), n=60, out=out, report=False
    )
    same = first[first.attack == "fgsm"].cell.tolist() == changed[changed.attack == "fgsm"].cell.tolist()
    assert same and set(first[first.attack == "pgd-linf"].cell).isdisjoint(changed[changed.attack == "pgd-linf"].cell)


def test_worst_case_is_kept_per_norm(tiny_runs, tmp_path, suite_file, capsys):
    mixed = PGD_SUITE + '[[attack]]\nname = "pgd-l2"\ntype = "pgd"\nnorm = "2"\neps = [0.3, 1.0]\nsteps = 5\n'
    results = robustcnn.sweep([tiny_runs[0].path], suite=suite_file(mixed), n=40, out=str(tmp_path / "m"), report=False)
    worst = results[results.kind == "worst-case"]
    assert sorted(zip(worst.attack, worst.eps, strict=True)) == sorted(
        [("worst-case", e) for e in (0.05, 0.1, 0.2, 0.3)] + [("worst-case-l2", e) for e in (0.3, 1.0)]
    )
    linf_at_03 = worst[(worst.attack == "worst-case") & (worst.eps == 0.3)].accuracy.item()
    assert linf_at_03 == min(accuracy(results, "std", a, 0.3) for a in ("fgsm", "pgd-linf"))
    argv = [str(tiny_runs[0].path), "--suite", suite_file(mixed), "--n", "40", "--out", str(tmp_path / "m")]
    assert cli(*argv, "--fail-under", "worst-case-l2@1.0=0") == 0


def test_patch_rows_report_accuracy_and_target_success(tiny_runs, tmp_path, suite_file):
    suite = suite_file(
        '[[attack]]\nname = "patch"\ntype = "patch"\nscales = [0.2, 0.5]\niterations = 5\ntrain_images = 32\n'
    )
    results = robustcnn.sweep([tiny_runs[0].path], suite=suite, n=60, out=str(tmp_path / "p"), report=False)
    patch = results[results.attack == "patch"]
    assert patch.scale.tolist() == [0.2, 0.5] and patch.eps.isna().all()
    assert patch.target_success.between(0, 1).all()
    assert (tmp_path / "p" / "patches" / "std__patch.png").is_file()


def test_gallery_and_manifest_are_written(naive_results):
    _, out = naive_results
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["mode"] == "naive"
    assert [m["id"] for m in manifest["models"]] == ["std", "adv"]
    assert all(c["status"] == "pass" for m in manifest["models"] for c in m["model_checks"])
    with np.load(out / "gallery" / "adv.npz") as gallery:
        assert gallery["x"].shape == gallery["x_adv"].shape and gallery["x"].shape[1:] == (1, 28, 28)
        assert float(np.abs(gallery["x_adv"] - gallery["x"]).max()) <= float(gallery["eps"]) + 1e-6


def _gallery_agrees_with_the_cells(out, model: str) -> int:
    """The gallery's images are the first clean-correct ones, within eps, and each is fooled exactly where the
    attack's row at that eps counts it as broken; returns how many it shows fooled."""
    from robustcnn.outcomes import outcomes
    from robustcnn.report.load import load_sweep

    data = load_sweep(out)
    found = outcomes(data, model)
    with np.load(out / "gallery" / f"{model}.npz") as gallery:
        arrays = {key: gallery[key] for key in gallery.files}
    rows = {(r["kind"], r["attack"], r["eps"]): row for row, r in found.records.items()}
    clean = found.correct(rows[("clean", "clean", 0.0)])
    robust = found.correct(rows[("attack", str(arrays["attack"]), float(arrays["eps"]))])
    index = np.flatnonzero(clean)[: len(arrays["y"])]
    assert len(index) == 8 and np.abs(arrays["x_adv"] - arrays["x"]).max() <= float(arrays["eps"]) + 1e-6
    assert ((arrays["x_adv"] >= 0) & (arrays["x_adv"] <= 1)).all()
    assert np.array_equal(arrays["pred_adv"] == arrays["y"], robust[index])
    return int((arrays["pred_adv"] != arrays["y"]).sum())


def test_the_gallery_takes_the_cells_adversarial_examples_and_attacks_only_what_they_did_not(
    tiny_runs, tmp_path, suite_file, monkeypatch
):
    """Nested mode: each gallery image was attacked by the gallery attack's cells up to its headline eps (at the eps
    where it broke, or at the headline eps), so the gallery attacks nothing again; a resumed sweep, whose cells come
    from disk, attacks them again and shows the same outcomes."""
    again = []
    monkeypatch.setattr(runner, "seed_all", lambda seed: again.append(seed))  # the gallery's own attack seeds first
    out = tmp_path / "out"
    models = [str(r.path) for r in tiny_runs]
    options = {"suite": suite_file(), "n": 80, "out": str(out), "probe": 0, "report": False, "gallery": 8}
    robustcnn.sweep(models, **options)
    assert again == []
    fooled = [_gallery_agrees_with_the_cells(out, model) for model in ("std", "adv")]
    assert fooled[0] > 0  # the standard model is broken: the gallery shows adversarial examples
    (out / "gallery" / "std.npz").unlink()
    robustcnn.sweep(models, **options)  # every cell found on disk
    assert len(again) == 2
    assert [_gallery_agrees_with_the_cells(out, model) for model in ("std", "adv")] == fooled


def cli(*argv):
    return run_main(sweep_cli.main, [*argv, "--no-report"], name="robustcnn.sweep")


def test_gate_exit_codes(tiny_runs, tmp_path, suite_file, capsys):
    suite, adv, out = suite_file(), str(tiny_runs[1].path), str(tmp_path / "gate")
    assert cli(adv, "--suite", suite, "--n", "60", "--out", out, "--fail-under", "pgd-linf@0.1=0.05") == 0
    assert cli(adv, "--suite", suite, "--n", "60", "--out", out, "--fail-under", "pgd-linf@0.3=0.999") == 1
    err = capsys.readouterr().err
    assert "gate not met: adv: pgd-linf@0.3 accuracy" in err and "< 0.999" in err
    assert cli(adv, "--suite", suite, "--n", "60", "--out", out, "--fail-under", "clean=0.99") == 1
    assert cli(adv, "--suite", suite, "--n", "60", "--out", out, "--fail-under", "worst-case@0.2=0.01") == 0


BAD_SWEEPS = [
    (["--fail-under", "pgd-linf=0.5"], "needs an eps"),
    (["--fail-under", "pgd@0.3=0.5"], "no attack 'pgd' in this sweep"),
    (["--fail-under", "pgd-linf@0.25=0.5"], "has no pgd-linf row at eps 0.25"),
    (["--fail-under", "pgd-linf@0.3=80"], "accuracy '80' must be a number in [0, 1]"),
    (["--n", "5000"], "--n 5000 is larger than the 1000 test images"),
    (["--n", "0"], "--n '0' is not allowed"),
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--dataset", "digits"], "takes 1x28x28 images in 10 classes but dataset 'digits' has 1x8x8"),
    (["--weights", "first"], "--weights 'first' is not allowed: choose one of: best, last"),
    (["--device", "cuda:7"], "device 'cuda:7'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_SWEEPS)
def test_bad_input_is_one_line_exit_2_and_keeps_earlier_results(tiny_runs, tmp_path, suite_file, capsys, argv, message):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "results.csv").write_text("earlier results\n")
    code = cli(str(tiny_runs[0].path), "--suite", suite_file(), "--out", str(out), *argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert (out / "results.csv").read_text() == "earlier results\n"


def test_bad_run_directories_and_outputs(tiny_runs, tmp_path, suite_file, capsys):
    suite = suite_file()
    (tmp_path / "plain").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path / "plain")], "is not a robustcnn run directory"),
        ([str(tiny_runs[0].path), "--out", str(blocker / "sub")], "cannot write to --out"),
        ([str(tiny_runs[0].path), "--out", str(blocker)], "is a file, not a directory"),
    ]
    for argv, message in cases:
        code = cli(*argv, "--suite", suite)
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_corrupt_weights_are_a_clear_error(tiny_runs, tmp_path, suite_file, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_runs[0].path, broken)
    (broken / "best.safetensors").write_bytes(b"\x00" * 100)
    assert cli(str(broken), "--suite", suite_file(), "--out", str(tmp_path / "o")) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_accuracy_in_rows_matches_an_independent_count(naive_results, tiny_runs):
    """Clean accuracy in results.csv equals a direct count with the loaded model on the same subset."""
    import torch

    results, _ = naive_results
    subset = runner.np.asarray(
        __import__("robustcnn.sweep.subjects", fromlist=["x"]).test_subset(1000, 200, 0, "mnist5k")
    )
    test = robustcnn.load_dataset("mnist5k", "test").subset(subset)
    model = tiny_runs[1].model()
    with torch.no_grad():
        direct = (model(test.images()).argmax(1) == test.y).float().mean().item()
    assert accuracy(results, "adv", "clean", 0.0) == pytest.approx(direct)


def test_an_identical_copy_gets_its_own_rows_and_headline(tiny_runs, tmp_path, suite_file):
    """The copy's cells are found in the cache (same weights), but its rows carry its own id."""
    import shutil

    from robustcnn.report.load import load_sweep
    from robustcnn.report.tables import headline

    original = tiny_runs[1].path
    copy = shutil.copytree(original, tmp_path / "copy")
    out = tmp_path / "out"
    results = robustcnn.sweep([original, copy], suite=suite_file(), n=60, out=str(out), report=False)
    by_model = {
        m: rows.drop(columns=["model", "cell", "seconds"]).reset_index(drop=True)
        for m, rows in results.groupby("model")
    }
    assert set(by_model) == {original.name, "copy"}
    pd.testing.assert_frame_equal(by_model[original.name], by_model["copy"])
    data = load_sweep(out)
    table = headline(data.results, data.models, data.manifest)
    assert all(cell is not None and not cell.guessed for _, cells in table.rows for cell in cells)


def test_cache_keys_change_with_the_library_versions(tiny_runs, tmp_path, suite_file, monkeypatch):
    suite, runs = suite_file(), [tiny_runs[1].path]
    robustcnn.sweep(runs, suite=suite, n=40, out=str(tmp_path / "out"), report=False)
    before = set((tmp_path / "out" / "cells").glob("*.npz"))
    real = runner.library_versions
    monkeypatch.setattr(runner, "library_versions", lambda: {**real(), "adversarial-robustness-toolbox": "9.9"})
    robustcnn.sweep(runs, suite=suite, n=40, out=str(tmp_path / "out"), report=False)
    after = set((tmp_path / "out" / "cells").glob("*.npz"))
    assert before < after and len(after) == 2 * len(before)  # every cell computed again, none reused


def test_recorded_parameters_are_what_ran(tiny_runs, tmp_path, suite_file):
    """Without a random start every restart begins at x, so ART runs one: the row says restarts 1."""
    suite = suite_file(PGD_SUITE + "restarts = 5\nrandom_start = false\n")
    results = robustcnn.sweep([tiny_runs[1].path], suite=suite, n=20, out=str(tmp_path / "out"), report=False)
    params = json.loads(results[(results.attack == "pgd-linf") & (results.kind == "attack")].params.iloc[0])
    assert params["restarts"] == 1 and params["random_start"] is False


def test_the_sweep_decides_the_headline_eps_per_norm(tiny_runs, tmp_path, suite_file):
    """A one-number reference_eps is the Linf one: L2 columns read the dataset's L2 eps (mnist5k: 2.0)."""
    suite = suite_file(
        'reference_eps = 0.2\n[[attack]]\nname = "fgsm"\ntype = "fgsm"\nnorm = "inf"\neps = [0.1, 0.2, 0.3]\n'
        '[[attack]]\nname = "pgd-l2"\ntype = "pgd"\nnorm = "2"\neps = [0.5, 1.9, 3.0]\nsteps = 3\n'
    )
    robustcnn.sweep([tiny_runs[0].path], suite=suite, n=20, out=str(tmp_path / "out"), report=False, probe=0)
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["models"][0]
    assert entry["reference_eps"] == {"inf": 0.2, "2": 2.0}
    assert entry["headline_eps"] == {"fgsm": 0.2, "pgd-l2": 1.9, "worst-case": 0.2, "worst-case-l2": 1.9}


LEAN_SUITE = """
description = "PGD in Linf and L2 with random starts, and FGSM"
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.1, 0.2]

[[attack]]
name = "pgd-linf"
type = "pgd"
norm = "inf"
eps = [0.1, 0.2, 0.3]
steps = 5

[[attack]]
name = "pgd-l2"
type = "pgd"
norm = "2"
eps = [1.0, 2.0]
steps = 5
restarts = 2
"""


def test_the_lean_pgd_gives_arts_numbers(tiny_runs, tmp_path, suite_file, monkeypatch):
    """The leaner PGD step, projection and input gradient are speed only: a sweep through ART's own classes
    (same seed, so the same random starts) gives the same results.csv, every row and every count."""
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    from robustcnn.attacks import art, pgd

    patches = [(pgd, "pgd_class", ProjectedGradientDescentPyTorch), (art, "classifier_class", PyTorchClassifier)]
    lean = lean_and_arts(tiny_runs, suite_file(LEAN_SUITE), tmp_path, monkeypatch, patches)
    assert (lean.kind == "attack").sum() == 2 * 7 and lean.n_correct.min() < lean.n_correct.max()


def lean_and_arts(tiny_runs, suite: str, tmp_path, monkeypatch, patches: list) -> pd.DataFrame:
    """The sweep's results, checked equal (seconds aside) to the same sweep with ART's own classes put back
    (`patches`: (module, name, ART's class)); same seed, so the same random starts."""
    runs = [r.path for r in tiny_runs]
    lean = robustcnn.sweep(runs, suite=suite, n=60, out=str(tmp_path / "lean"), report=False)
    for module, name, cls in patches:
        monkeypatch.setattr(module, name, lambda cls=cls: cls)
    arts = robustcnn.sweep(runs, suite=suite, n=60, out=str(tmp_path / "art"), report=False)
    pd.testing.assert_frame_equal(lean.drop(columns="seconds"), arts.drop(columns="seconds"))
    return lean


CASCADE_SUITE = """
cascade = true

[[attack]]
name = "apgd-ce"
type = "apgd-ce"
norm = "inf"
eps = [0.1, 0.2]
steps = 12

[[attack]]
name = "apgd-t"
type = "apgd-t"
norm = "inf"
eps = [0.1, 0.2]
steps = 12
targets = 3

[[attack]]
name = "square"
type = "square"
norm = "inf"
eps = [0.1, 0.2]
queries = 150
"""


def test_the_lean_apgd_and_square_give_arts_numbers(tiny_runs, tmp_path, suite_file, monkeypatch):
    """The lean APGD (one pass per iteration, every iterate watched in its loop, examples leaving once broken) and
    the lean Square (one pass per query) are speed only: the AutoAttack-grade cascade through ART's own classes (and
    the forward hook for every iterate) gives the same results.csv, every row and count, probes included."""
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

    from robustcnn.attacks import apgd, square

    patches = [(apgd, "apgd_class", AutoProjectedGradientDescent), (square, "square_class", SquareAttack)]
    lean = lean_and_arts(tiny_runs, suite_file(CASCADE_SUITE), tmp_path, monkeypatch, patches)
    attacked = lean[lean.kind == "attack"]
    assert len(attacked) == 2 * 3 * 2 and attacked.n_correct.min() < attacked.n_correct.max()
