"""Sweeps spread out, over Ray tasks (a local cluster) or --shard processes into one --out: one process's numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

import robustcnn
from robustcnn.cli import run_main
from robustcnn.report import write_report
from robustcnn.sweep import __main__ as sweep_cli
from robustcnn.sweep.store import CellStore
from tests.conftest import ROOT

SUITE = """
description = "scale-out test suite: two chains per model, a patch chain, probes"
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.05, 0.1, 0.2]
[[attack]]
name = "pgd-linf"
type = "pgd"
norm = "inf"
eps = [0.05, 0.1, 0.2]
steps = 5
[[attack]]
name = "patch"
type = "patch"
scales = [0.3]
iterations = 3
train_images = 16
"""
N = "40"


@pytest.fixture(scope="module")
def setup(tiny_runs, tmp_path_factory):
    """The runs, the suite, and the single-process sweep everything is compared with."""
    root = tmp_path_factory.mktemp("scale-out")
    suite = root / "suite.toml"
    suite.write_text(SUITE)
    runs = [str(run.path) for run in tiny_runs]
    local = robustcnn.sweep(runs, suite=str(suite), n=int(N), out=str(root / "local"), report=False)
    local.attrs["out"] = str(root / "local")
    return runs, str(suite), local


def same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local cluster with 2 CPUs and 2 pretend GPUs (Ray only counts them: tasks still run on the CPU),
    with a temporary HOME so nothing lands in the real one."""
    import ray

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.setenv("RAY_AUTH_MODE", "disabled")  # Ray 2.60 writes ~/.ray/auth_token otherwise
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()


def test_a_ray_sweep_matches_one_process_and_puts_two_tasks_on_a_gpu(setup, ray_cluster, tmp_path):
    runs, suite, local = setup
    out = tmp_path / "ray"
    on_ray = robustcnn.sweep(runs, suite=suite, n=int(N), out=str(out), report=False, ray="auto", gpus_per_task=0.5)
    same_numbers(local, on_ray)
    tasks = json.loads((out / "manifest.json").read_text())["ray_tasks"]
    assert sorted((t["model"], t["attacks"][0]) for t in tasks) == sorted(
        (m, a) for m in ("std", "adv") for a in ("fgsm", "pgd-linf", "patch")
    )  # one task per chain, and the patch images reached the workers (no data files there)
    assert all(len(t["gpu_ids"]) == 1 and t["gpu_ids"][0] in {"0", "1"} for t in tasks)
    again = robustcnn.sweep(runs, suite=suite, n=int(N), out=str(out), report=False, ray="auto", gpus_per_task=0.5)
    same_numbers(local, again)
    assert json.loads((out / "manifest.json").read_text()).get("ray_tasks", []) == []  # resumed: no task ran


def _kill_a_chain_task() -> bool:
    """SIGKILL one Ray worker process that is running a chain (Ray titles it ray::_chain_task)."""
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and title.startswith(b"ray::_chain_task"):
            os.kill(int(proc.name), signal.SIGKILL)
            return True
    return False


def test_a_killed_ray_worker_loses_only_its_cell_in_flight(setup, ray_cluster, tmp_path, monkeypatch, capsys):
    runs, suite, local = setup
    saves, killed = Counter(), []
    save = CellStore.save

    def save_and_kill(self, key, cell):  # the driver saves every cell once, as it arrives
        save(self, key, cell)
        saves[key] += 1
        if sum(saves.values()) == 4 and not killed:  # both clean cells and two attack cells are on disk
            killed.append(_kill_a_chain_task())

    monkeypatch.setattr(CellStore, "save", save_and_kill)
    on_ray = robustcnn.sweep(runs, suite=suite, n=int(N), out=str(tmp_path / "killed"), report=False, ray="auto")
    assert killed == [True]
    assert "a Ray worker was lost" in capsys.readouterr().err
    assert set(saves.values()) == {1}  # no cell computed twice: the retried chain was handed what was done
    same_numbers(local, on_ray)


def test_ray_is_an_optional_extra(setup, tmp_path, monkeypatch, capsys):
    runs, suite, _ = setup
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    out = tmp_path / "no-ray"
    code = run_main(sweep_cli.main, [*runs, "--suite", suite, "--out", str(out), "--ray"], name="robustcnn.sweep")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install 'robustcnn[ray]'" in err
    assert not out.exists()


def test_shards_finish_in_either_order_and_the_last_writes_the_whole_results(setup, tmp_path):
    runs, suite, local = setup
    out = tmp_path / "shards"
    first = robustcnn.sweep(runs, suite=suite, n=int(N), out=str(out), shard="1/2")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "partial" and "shard 1/2" in manifest["message"]
    assert 0 < len(first) < len(local) and "worst-case" not in set(first.kind)  # no worst case from part of it
    assert not (out / "report.html").exists()
    assert "sweep partial, not every cell is done" in write_report(out).table  # a report made anyway says so
    (out / "report.html").unlink()
    last = robustcnn.sweep(runs, suite=suite, n=int(N), out=str(out), shard="0/2")
    same_numbers(local, last)
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    assert (out / "report.html").is_file()  # written by the shard that finished last


@pytest.mark.slow  # 17 s of processes: make test-all; the shards' assembly is tested in-process above
def test_two_shard_processes_at_once_into_one_out_equal_one_process(setup, tmp_path):
    runs, suite, local = setup
    out = tmp_path / "together"
    command = [
        sys.executable,
        "-m",
        "robustcnn.sweep",
        *runs,
        "--suite",
        suite,
        "--n",
        N,
        "--out",
        str(out),
        "--no-report",
    ]
    shards = [
        subprocess.Popen([*command, "--shard", f"{i}/2"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        for i in range(2)
    ]
    assert [shard.wait(timeout=300) for shard in shards] == [0, 0]
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    one_process = pd.read_csv(Path(local.attrs["out"]) / "results.csv")  # read back alike: same dtypes
    same_numbers(one_process, pd.read_csv(out / "results.csv"))
    assert len(list((out / "cells").glob("*.npz"))) == len(set(local.cell) - {""})  # each cell once


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard", "2/2"], "--shard '2/2' is not allowed: needs 0 <= I < N"),
        (["--shard", "half"], "--shard 'half' is not allowed: write it as I/N"),
        (["--shard", "0/2", "--ray"], "--ray and --shard 0/2 do not go together"),
        (["--gpus-per-task", "0.5"], "--cpus-per-task and --gpus-per-task apply to --ray only"),
        (["--ray", "--device", "cuda"], "--device cuda with --ray needs --gpus-per-task"),
    ],
)
def test_bad_scale_out_options_are_one_line_errors(setup, tmp_path, capsys, flags, message):
    runs, suite, _ = setup
    out = tmp_path / "bad"
    code = run_main(sweep_cli.main, [*runs, "--suite", suite, "--out", str(out), *flags], name="robustcnn.sweep")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
