"""Interruptions on real processes: SIGKILL and Ctrl-C during training and sweeps, a loss that turns NaN,
and memory over a sweep of many models.

Every process here runs with one thread, so that two can share the CI machine's two cores and float sums
happen in the same order in every process: that is what makes "bitwise equal to an uninterrupted run"
a fair demand across processes (it also shows two separate CLI trainings give identical bytes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

import robustcnn

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT = 400  # seconds for one process; a busy CI machine is slow, a hung process is a failure


@dataclass
class Proc:
    popen: subprocess.Popen
    log: Path  # its stderr

    @property
    def err(self) -> str:
        return self.log.read_text()

    def wait(self) -> int:
        try:
            return self.popen.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            pytest.fail(f"process did not finish in {TIMEOUT} s:\n{self.err[-3000:]}")

    def signal(self, number: int) -> int:
        assert self.popen.poll() is None, f"it already ended:\n{self.err[-3000:]}"
        self.popen.send_signal(number)
        return self.wait()


def start(tmp: Path, name: str, *argv: str) -> Proc:
    """`python -m robustcnn.X argv` (or `python -c ...`) as a user would run it, stderr kept in a file."""
    log = tmp / f"{name}.stderr"
    with open(log, "w") as err:
        command = [sys.executable, *argv] if argv[0] == "-c" else [sys.executable, "-m", *argv]
        popen = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env=ONE_THREAD
        )
    return Proc(popen, log)


def wait_until(condition: Callable[[], bool], proc: Proc, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.popen.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.popen.returncode}) before {what}:\n{proc.err[-3000:]}")
        if time.monotonic() > deadline:
            proc.popen.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:  # written atomically, so never half a file: absent or whole
        return {}


def without_seconds(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns="seconds")


# --- training ------------------------------------------------------------------------------------------------
# eps 0.1: robust after 3 tiny epochs, so the overfitting guard lets the run finish
TRAIN = ["robustcnn.train", "--dataset", "mnist5k", "--train-size", "512", "--val-size", "64", "--batch-size", "64",
         "--epochs", "3", "--adv", "--attack-steps", "3", "--eps-warmup", "1", "--eps", "0.1"]  # fmt: skip


def epochs_done(run: Path) -> int:
    return read_json(run / "run.json").get("epochs_done", 0)


def test_training_killed_then_interrupted_resumes_to_the_same_bytes(tmp_path):
    """SIGKILL in epoch 2, resume, Ctrl-C in epoch 3, resume: the weights equal an uninterrupted run's, bit for bit."""
    whole, run = tmp_path / "whole", tmp_path / "split"
    reference = start(tmp_path, "whole", *TRAIN, "--out", str(whole))  # runs alongside, on the other core

    first = start(tmp_path, "first", *TRAIN, "--out", str(run))
    wait_until(lambda: epochs_done(run) >= 1, first, "epoch 1 finished")
    time.sleep(0.3)  # well into epoch 2 (an epoch takes seconds)
    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    meta = read_json(run / "run.json")
    assert (meta["status"], meta["epochs_done"]) == ("running", 1)  # killed: no chance to say anything

    second = start(tmp_path, "second", "robustcnn.train", "--resume", str(run))
    wait_until(lambda: epochs_done(run) >= 2, second, "epoch 2 finished after the resume")
    time.sleep(0.3)
    assert second.signal(signal.SIGINT) == 130
    assert "from epoch 2 of 3" in second.err and "Traceback" not in second.err
    assert (
        second.err.strip().splitlines()[-1]
        == f"robustcnn.train: interrupted; resume with: python -m robustcnn.train --resume {run}"
    )
    meta = read_json(run / "run.json")
    assert (meta["status"], meta["epochs_done"]) == ("interrupted", 2) and f"--resume {run}" in meta["message"]

    third = start(tmp_path, "third", "robustcnn.train", "--resume", str(run))
    assert third.wait() == 0, third.err
    assert "from epoch 3 of 3" in third.err
    assert reference.wait() == 0, reference.err
    for name in ("best.safetensors", "last.safetensors"):
        assert (run / name).read_bytes() == (whole / name).read_bytes(), name
    pd.testing.assert_frame_equal(without_seconds(run / "metrics.csv"), without_seconds(whole / "metrics.csv"))
    done, expected = read_json(run / "run.json"), read_json(whole / "run.json")
    assert done["status"] == "finished" and done["final"] == expected["final"]
    assert len(done["commands"]) == 3  # the first command and both resumes, for provenance


NAN_AFTER = """
import sys
from robustcnn.train.methods import Method
from robustcnn.train.__main__ import entry

original, steps = Method.loss, [0]


def loss(self, x, y, eps):  # fault injection: the loss turns NaN after epoch 1 (2 steps of 64 images)
    steps[0] += 1
    value, logits = original(self, x, y, eps)
    return (value * float("nan"), logits) if steps[0] > 2 else (value, logits)


Method.loss = loss
sys.argv = ["robustcnn.train", *sys.argv[1:]]
entry()
"""
SMALL = ["--train-size", "128", "--val-size", "32", "--batch-size", "64"]


def test_a_non_finite_loss_stops_with_exit_1_and_keeps_the_last_good_epoch(tmp_path):
    boom, late = tmp_path / "boom", tmp_path / "late"
    diverges = start(tmp_path, "boom", "robustcnn.train", *SMALL, "--epochs", "2", "--optimizer", "sgd",
                     "--lr", "1e12", "--out", str(boom))  # fmt: skip
    injected = start(tmp_path, "late", "-c", NAN_AFTER, *SMALL, "--epochs", "3", "--out", str(late))

    assert diverges.wait() == 1
    lines = diverges.err.strip().splitlines()
    assert "Traceback" not in diverges.err and lines[-1].startswith("robustcnn.train: failed: training stopped: ")
    assert "the loss became" in lines[-1] and "in epoch 1 (lr " in lines[-1] and "lower --lr" in lines[-1]
    assert "no epoch finished" in lines[-1] and not list(boom.glob("*.safetensors"))
    assert read_json(boom / "run.json")["status"] == "failed"

    assert injected.wait() == 1
    last = injected.err.strip().splitlines()[-1]
    assert "Traceback" not in injected.err and "loss became nan in epoch 2" in last
    assert f"the last good checkpoint (epoch 1) is kept in {late}" in last
    meta = read_json(late / "run.json")
    assert (meta["status"], meta["epochs_done"], len(meta["metrics"])) == ("failed", 1, 1)
    assert robustcnn.load_run(late).weights_epoch("last") == 1
    model = robustcnn.load_model(late, "last")  # refuses non-finite weights, so this also proves they are finite
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- sweeps ----------------------------------------------------------------------------------------------------
SWEEP_SUITE = """
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.05, 0.1, 0.15, 0.2, 0.3]
[[attack]]
name = "pgd"
type = "pgd"
norm = "inf"
eps = [0.05, 0.1, 0.15, 0.2, 0.3]
steps = 10
"""


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("reliability-runs")
    quick = {"dataset": "mnist5k", "train_size": 256, "val_size": 32, "batch_size": 64, "epochs": 1}
    return [robustcnn.train(**quick, seed=seed, out=str(root / f"m{seed}")).path for seed in (0, 1)]


def cells(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "cells").glob("*.npz")}


def test_sweep_killed_then_interrupted_keeps_every_finished_cell(tmp_path, two_models):
    suite = tmp_path / "suite.toml"
    suite.write_text(SWEEP_SUITE)
    whole, out = tmp_path / "whole", tmp_path / "split"

    def command(target: Path) -> list[str]:
        return ["robustcnn.sweep", *map(str, two_models), "--suite", str(suite), "--n", "100", "--out", str(target)]

    reference = start(tmp_path, "whole", *command(whole), "--no-report")

    first = start(tmp_path, "first", *command(out))
    wait_until(lambda: len(cells(out)) >= 4, first, "four cells finished")
    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    kept = cells(out)
    assert read_json(out / "manifest.json")["status"] == "running"

    second = start(tmp_path, "second", *command(out))  # the same command resumes
    wait_until(lambda: len(cells(out)) >= len(kept) + 3, second, "three more cells finished")
    assert second.signal(signal.SIGINT) == 130
    assert "Traceback" not in second.err
    assert second.err.strip().splitlines()[-1] == (
        f"robustcnn.sweep: interrupted; finished cells are kept in {out}/cells: re-run the same command to resume"
    )
    manifest = read_json(out / "manifest.json")
    assert manifest["status"] == "interrupted" and "re-run the same command" in manifest["message"]
    kept_after_ctrl_c = cells(out)

    third = start(tmp_path, "third", *command(out))
    assert third.wait() == 0, third.err
    assert reference.wait() == 0, reference.err
    finished = cells(out)
    for name, data in {**kept, **kept_after_ctrl_c}.items():
        assert finished.get(name) == data, f"cell {name} was lost or computed again"
    results = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    keyed = results[results["cell"] != ""]  # worst-case rows are derived, they have no cell of their own
    assert not keyed.duplicated(["cell", "eps", "scale"]).any()  # a cell's rows (a probe: one per eps) appear once
    assert not results.duplicated(["model", "kind", "attack", "eps", "scale"]).any()
    assert set(keyed["cell"]) == {name.removesuffix(".npz") for name in finished}
    pd.testing.assert_frame_equal(without_seconds(out / "results.csv"), without_seconds(whole / "results.csv"))
    assert read_json(out / "manifest.json")["status"] == "finished"


# --- memory under load -----------------------------------------------------------------------------------------
SMALL_SUITE = """
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps_fraction = [0.5, 1.0, 2.0]
[[attack]]
name = "pgd"
type = "pgd"
norm = "inf"
eps_fraction = [0.5, 1.0, 2.0]
steps = 5
"""


@pytest.fixture(scope="module")
def many_models(tmp_path_factory) -> list[Path]:
    """20 distinct 8x8-digit models: one trained, 19 copies with seeded noise on the weights (distinct hashes,
    so no cell is shared through the cache). Each is 91 KB of weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("many-models")
    quick = {"dataset": "digits", "train_size": 128, "val_size": 32, "batch_size": 64, "epochs": 1}
    first = robustcnn.train(**quick, out=str(root / "m00")).path
    runs = [first]
    for i in range(1, 20):
        run = Path(shutil.copytree(first, root / f"m{i:02d}"))
        noise = torch.Generator().manual_seed(i)
        for path in (run / "best.safetensors", run / "last.safetensors"):
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata()
            tensors = load_file(path)
            for name, value in tensors.items():
                if name.startswith("net."):
                    tensors[name] = value + 0.01 * torch.randn(value.shape, generator=noise)
            save_file(tensors, str(path), metadata=metadata)
        runs.append(run)
    return runs


PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def peak_rss_of_sweeps(tmp_path: Path, suite: str, groups: dict[str, list[Path]]) -> dict[str, float]:
    """Runs one sweep per group side by side; returns each sweep's peak RSS in MB.

    Measured through a small wrapper process: Linux counts a child's memory before `exec` into its
    ru_maxrss, and a child forked straight from this pytest process (1 GB, torch loaded) would report at
    least that much whatever the sweep uses.
    """
    path = tmp_path / "suite.toml"
    path.write_text(suite)
    procs = {
        name: start(tmp_path, name, "-c", PEAK_RSS, str(tmp_path / f"{name}.rss"), sys.executable, "-m",
                    "robustcnn.sweep", *map(str, runs), "--suite", str(path), "--n", "50",
                    "--out", str(tmp_path / name), "--no-report")
        for name, runs in groups.items()
    }  # fmt: skip
    peaks = {}
    for name, proc in procs.items():
        assert proc.wait() == 0, proc.err
        results = pd.read_csv(tmp_path / name / "results.csv")
        assert results["model"].nunique() == len(groups[name])
        peaks[name] = int((tmp_path / f"{name}.rss").read_text()) / 1024  # KiB on Linux
    return peaks


def check_bounded(peaks: dict[str, float], few: str, many: str, extra_models: int, capsys) -> None:
    """Everything a sweep keeps per model here is under 1 MB (91 KB of weights, 50 test images, per-example
    flags), and growth measured without a leak is 2-4 MB in all. Allow 2 MB per extra model plus 10 MB of
    allocator noise: a leak of 1 MB per cell (7 cells a model) measured +32 MB from 2 to 8 models, and fails."""
    growth, bound = peaks[many] - peaks[few], 10 + 2 * extra_models
    with capsys.disabled():
        print(f"\npeak RSS: {peaks[few]:.1f} MB ({few}), {peaks[many]:.1f} MB ({many}), growth {growth:+.1f} MB")
    assert growth < bound, f"peak memory grew by {growth:.1f} MB (bound {bound} MB): {peaks}"


def test_memory_stays_flat_as_models_are_added(tmp_path, many_models, capsys):
    peaks = peak_rss_of_sweeps(tmp_path, SMALL_SUITE, {"2-models": many_models[:2], "8-models": many_models[:8]})
    check_bounded(peaks, "2-models", "8-models", 6, capsys)


@pytest.mark.slow
def test_twenty_models_with_the_quick_suite_run_in_flat_memory(tmp_path, many_models, capsys):
    quick = (ROOT / "attacks" / "quick.toml").read_text()
    cheaper = quick.replace("steps = 20", "steps = 5").replace("iterations = 40", "iterations = 2")
    cheaper = cheaper.replace("train_images = 64", "train_images = 16")
    assert cheaper.count("= 5") and "iterations = 2" in cheaper and "train_images = 16" in cheaper
    peaks = peak_rss_of_sweeps(tmp_path, cheaper, {"5-models": many_models[:5], "20-models": many_models})
    check_bounded(peaks, "5-models", "20-models", 15, capsys)


def test_sigterm_stops_training_like_ctrl_c(tmp_path):
    """Batch schedulers and `kill` send SIGTERM: the run is saved as interrupted, with the resume hint."""
    run = tmp_path / "run"
    proc = start(tmp_path, "term", *TRAIN, "--out", str(run))
    wait_until(lambda: epochs_done(run) >= 1, proc, "epoch 1 finished")
    assert proc.signal(signal.SIGTERM) == 130
    assert "Traceback" not in proc.err and f"--resume {run}" in proc.err.strip().splitlines()[-1]
    assert read_json(run / "run.json")["status"] == "interrupted"


def test_stale_temp_files_of_killed_writers_are_removed_but_fresh_ones_kept(tmp_path):
    from robustcnn.fileio import remove_stale_temps

    old, fresh = tmp_path / ".best.safetensors.abc.robustcnn-tmp", tmp_path / ".run.json.def.robustcnn-tmp"
    data = tmp_path / "run.json"
    for path in (old, fresh, data):
        path.write_text("x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.utime(data, (time.time() - 3600, time.time() - 3600))
    remove_stale_temps(tmp_path)
    assert not old.exists() and fresh.exists() and data.exists()
