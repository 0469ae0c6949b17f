"""The training loop's overfitting guard: with scripted validation rows, what it stops on, what best.safetensors
keeps, the status and message a run ends with, and the exit code; then a real FGSM-RS run that overfits, caught
in training and by the report, beside a PGD-trained run that passes both."""

from __future__ import annotations

import json

import pytest
from conftest import SMALL_RUN

import robustcnn
from robustcnn.cli import run_main
from robustcnn.train import __main__ as train_cli
from robustcnn.train.validate import Validator

TINY = {"dataset": "mnist5k", "train_size": 256, "val_size": 64, "batch_size": 64, "adv": True}
TINY_FLAGS = ["--train-size", "256", "--val-size", "64", "--batch-size", "64", "--adv", "--adv-method", "fgsm-rs"]


def script(monkeypatch, rows: list[tuple[float, float]]) -> None:
    """Validation returns (FGSM, PGD-10) accuracies from `rows`, one per epoch."""
    epochs = iter(rows)

    def scripted(self):
        fgsm, pgd = next(epochs)
        return {"val_acc": 0.95, "val_fgsm_acc": fgsm, "val_pgd_acc": pgd}

    monkeypatch.setattr(Validator, "__call__", scripted)


def kept_epoch(run, which="best") -> int:
    return run.weights_epoch(which)


def test_overfitting_stops_the_run_and_best_keeps_the_last_sound_epoch(tmp_path, monkeypatch):
    script(monkeypatch, [(0.50, 0.40), (0.60, 0.45), (0.90, 0.05), (0.90, 0.05)])
    run = robustcnn.train(**TINY, epochs=4, eps_warmup=0, attack_steps=1, out=str(tmp_path / "co"))
    meta = run.meta
    assert meta["status"] == "stopped-early" and meta["epochs_done"] == 3
    assert meta["message"].startswith("catastrophic overfitting at epoch 3: val single-step accuracy 90.0% but")
    assert "best.safetensors keeps epoch 2 (val PGD-10 45.0%)" in meta["message"]
    assert kept_epoch(run) == 2 and meta["final"]["val_pgd_acc"] == pytest.approx(0.45)
    resumed = robustcnn.train(resume=run.path)  # no more epochs from the overfitted weights
    assert resumed.meta["epochs_done"] == 3 and resumed.meta["status"] == "stopped-early" and kept_epoch(resumed) == 2


def test_a_run_that_is_never_robust_ends_not_robust_with_exit_1(tmp_path, monkeypatch, capsys):
    script(monkeypatch, [(0.85, 0.12)] * 3)  # the FGSM-RS run: FGSM 82-85%, PGD 12%
    out = tmp_path / "never"
    code = run_main(train_cli.main, [*TINY_FLAGS, "--epochs", "3", "--eps-warmup", "0", "--out", str(out)])
    captured = capsys.readouterr()
    meta = json.loads((out / "run.json").read_text())
    assert code == 1 and meta["status"] == "not-robust" and meta["epochs_done"] == 2  # two epochs with the gap
    assert "not-robust" in captured.out and "val_pgd_acc=0.1200" in captured.out
    line = captured.err.strip().splitlines()[-1]  # the last line says what happened and what to try
    assert line.startswith("not-robust: no epoch became robust (catastrophic overfitting at epoch 2")
    assert "--adv-method pgd --attack-steps 2 --attack-lr 0.2" in line and "Traceback" not in captured.err


def test_a_run_below_the_floor_is_not_robust_without_overfitting(tmp_path, monkeypatch):
    script(monkeypatch, [(0.25, 0.10), (0.30, 0.15)])  # small gaps, but PGD accuracy never above twice chance
    run = robustcnn.train(**TINY, epochs=2, eps_warmup=0, out=str(tmp_path / "floor"))
    assert run.meta["status"] == "not-robust" and run.meta["epochs_done"] == 2
    assert "val PGD-10 accuracy 15.0% is at most 20% (twice chance)" in run.meta["message"]
    assert "train longer (--epochs)" in run.meta["message"]


def test_an_unsound_epoch_never_replaces_a_sound_best(tmp_path, monkeypatch):
    # warm-up epochs are judged but never stop the run; epoch 2 has the higher PGD accuracy but a 40-point gap
    script(monkeypatch, [(0.45, 0.30), (0.75, 0.35), (0.50, 0.25)])
    run = robustcnn.train(**TINY, epochs=3, eps_warmup=2, out=str(tmp_path / "sound"))
    assert run.meta["status"] == "finished" and kept_epoch(run) == 1 and kept_epoch(run, "last") == 3


def test_standard_training_is_not_judged(tmp_path, monkeypatch):
    script(monkeypatch, [(0.05, 0.0)])
    run = robustcnn.train(**{**TINY, "adv": False}, epochs=1, out=str(tmp_path / "std"))
    assert run.meta["status"] == "finished" and "val_pgd_acc" not in run.meta["final"]


# real runs: FGSM-RS overfitting on tiny data, caught in training and by the report ---------------------

# eps 0.3: FGSM-RS overfits as soon as it trains at full eps. Sized to land far past the guard's edge, not on
# it: over seeds 0-3 the settled epochs' single-step minus PGD-10 gap was 41-63 points (the guard needs 30),
# PGD-10 at most 0.33 of single-step accuracy (it needs under 0.5). 1024 images and 64 held out: 36-44 points.
OVERFITTING_RUN = {**SMALL_RUN, "adv": True, "adv_method": "fgsm-rs", "train_size": 2048, "val_size": 128}
OVERFITTING_RUN["eps_warmup"] = 2  # settled epochs 3-4: the gap has opened wide by then
GAP_SUITE = """
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.2, 0.3]
[[attack]]
name = "pgd"
type = "pgd"
norm = "inf"
eps = [0.2, 0.3]
steps = 20
"""


@pytest.fixture(scope="module")
def overfitted(tmp_path_factory):
    return robustcnn.train(**OVERFITTING_RUN, out=str(tmp_path_factory.mktemp("overfit") / "fgsm-rs"))


def test_fgsm_rs_overfitting_on_real_data_ends_not_robust(overfitted):
    meta = overfitted.meta
    assert meta["status"] == "not-robust", meta["message"]
    assert "catastrophic overfitting" in meta["message"] and meta["final"]["val_pgd_acc"] <= 0.2
    settled = [r for r in meta["metrics"] if r["epoch"] > OVERFITTING_RUN["eps_warmup"]]
    assert all(max(r["val_fgsm_acc"], r["val_train_attack_acc"]) - r["val_pgd_acc"] > 0.3 for r in settled)


def test_the_report_fails_the_overfitted_model_and_passes_the_pgd_trained_one(overfitted, tiny_runs, tmp_path):
    healthy = tiny_runs[1]
    assert healthy.meta["status"] == "finished", healthy.meta["message"]
    suite = tmp_path / "gap.toml"
    suite.write_text(GAP_SUITE)
    out = tmp_path / "sweep"
    robustcnn.sweep([str(overfitted.path), str(healthy.path)], suite=str(suite), n=200, probe=0, out=str(out))
    found = {(c["name"], c["model"]): c for c in json.loads((out / "checks.json").read_text())["checks"]}
    bad, good = overfitted.path.name, healthy.path.name
    gap = found[("trained-attack-gap", bad)]
    assert gap["status"] == "fail" and "catastrophic overfitting / gradient masking" in gap["message"], gap
    assert found[("catastrophic-overfitting", bad)]["status"] == "fail"
    assert "fgsm-rs (not-robust)" in (out / "report.html").read_text()  # the guard's verdict beside the method
    assert found[("trained-attack-gap", good)]["status"] == "pass", found[("trained-attack-gap", good)]
    assert found[("catastrophic-overfitting", good)]["status"] == "pass"
