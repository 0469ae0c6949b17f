"""Training under torchrun on CPU (gloo, two processes): one model trained together, rank 0 writing and speaking,
the same recipe as one process, and every rank stopping together on a failure (robustcnn/train/distributed.py).

Each torchrun start costs ~10 s of imports and rendezvous on 2 cores, so the runs are tiny and shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

import robustcnn
from robustcnn.data import Augment
from robustcnn.errors import UsageError
from robustcnn.train.distributed import Group, weights_digest
from robustcnn.train.loop import augment

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]  # a free port
TIMEOUT = 240  # seconds for any torchrun; a hang fails the test instead of blocking the suite
SMALL = ["--dataset", "mnist5k", "--train-size", "256", "--val-size", "64", "--batch-size", "32", "--epochs", "2"]
PGD = ["--adv", "--eps-warmup", "0", "--attack-steps", "3", "--attack-lr", "0.2"]  # the README's fast recipe, 3 steps


def torchrun(*args: str, entry: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Runs `torchrun -m robustcnn.train ARGS` (or tests/ddp_entry.py ENTRY ARGS); returns it and its seconds.

    Each run gets an empty HOME, as on a new node: both ranks then import ART for the first time there at once
    (they raced on creating ~/.art/config.json; robustcnn/art_setup.py)."""
    target = [str(ROOT / "tests" / "ddp_entry.py"), entry] if entry else ["-m", "robustcnn.train"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="home-") as home:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": home}
        done = subprocess.run(
            [*TORCHRUN, *target, *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert "NameError: name '_config'" not in done.stderr, done.stderr[-3000:]  # ART's first-import race
    return done, time.perf_counter() - started


def meta(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The shared two-process run, tracked in MLflow (robustcnn[mlflow], in the dev extra) beside it in `store`."""
    out = tmp_path_factory.mktemp("ddp") / "two"
    track = ["--track", "mlflow", "--track-uri", str(out.parent / "store")] if find_spec("mlflow") else []
    done, _ = torchrun(*SMALL, *PGD, "--out", str(out), *track)
    assert (out / "run.json").is_file(), done.stderr[-3000:]
    return done, out


def test_both_ranks_end_with_the_same_weights(two_processes):
    _, out = two_processes
    digests = meta(out)["distributed"]["weights_sha256_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert digests[0] == weights_digest(robustcnn.load_run(out).model("last"))  # and they are the ones saved


def test_run_json_records_the_job_and_only_rank_0_speaks(two_processes):
    done, out = two_processes
    assert meta(out)["distributed"] | {"weights_sha256_by_rank": None} == {
        "world_size": 2, "backend": "gloo", "batch_per_rank": 16, "weights_sha256_by_rank": None,
    }  # fmt: skip
    summaries = [line for line in done.stdout.splitlines() if line.startswith(str(out))]
    assert len(summaries) == 1, done.stdout
    assert done.stderr.count("epoch 1/2") == 1 and done.stderr.count("done: best epoch") == 1, done.stderr
    assert "(rank 1)" not in done.stderr


def test_only_rank_0_tracks_the_job(two_processes, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    _, out = two_processes
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.17+ reads a file store only when asked to
    client = MlflowClient((out.parent / "store").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("robustcnn-train").experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_pgd_acc")
    assert sorted((m.step, m.value) for m in history) == [(r["epoch"], r["val_pgd_acc"]) for r in meta(out)["metrics"]]


def test_two_processes_train_what_one_does_with_the_same_global_batch(two_processes, tmp_path):
    """Same data order and schedule; only the rounding of the averaged gradient and rank 1's attack starts
    differ. Tolerances, after 2 epochs of PGD AT on 256 images: train loss 0.02, accuracies 10 points (64 val
    images: 1 image is 1.6 points). Measured: loss 1e-4, accuracies within 3 points."""
    _, out = two_processes
    settings = {"train_size": 256, "val_size": 64, "batch_size": 32, "epochs": 2, "eps_warmup": 0}
    one = robustcnn.train(dataset="mnist5k", adv=True, attack_steps=3, attack_lr=0.2, **settings, out=str(tmp_path))
    two = meta(out)["metrics"]
    assert len(one.meta["metrics"]) == len(two) == 2
    for a, b in zip(one.meta["metrics"], two, strict=True):
        assert (a["lr"], a["eps"]) == (b["lr"], b["eps"])  # global steps on every rank
        assert abs(a["train_loss"] - b["train_loss"]) < 0.02, (a, b)
        for key in ("train_acc", "val_acc", "val_fgsm_acc", "val_pgd_acc"):
            assert abs(a[key] - b[key]) <= 0.1, (key, a, b)


def test_a_nan_loss_on_one_rank_stops_both_with_exit_1(tmp_path):
    out = tmp_path / "nan"
    done, _ = torchrun(*SMALL, "--out", str(out), entry="nan")
    assert done.returncode != 0
    assert "robustcnn.train: failed: training stopped: the loss became nan in epoch 2" in done.stderr, done.stderr
    assert "exitcode  : 1 " in done.stderr  # a rank ended through RunFailed, not by torchrun's SIGKILL
    saved = meta(out)
    assert saved["status"] == "failed" and saved["epochs_done"] == 1
    weights = robustcnn.load_run(out).model("last").state_dict()
    assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.slow  # two torchrun starts, ~30 s
def test_a_killed_rank_stops_the_other_promptly_and_resume_finishes(tmp_path):
    out = tmp_path / "killed"
    done, seconds = torchrun(*SMALL, "--out", str(out), entry="kill")
    assert done.returncode != 0 and "Signal 9 (SIGKILL)" in done.stderr, done.stderr[-3000:]
    assert seconds < 90  # no wait for the 10-minute collective timeout: gloo sees the closed socket at once
    assert meta(out)["epochs_done"] == 1
    done, _ = torchrun("--resume", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert meta(out)["status"] == "finished" and meta(out)["epochs_done"] == 2


@pytest.mark.slow  # two torchrun starts, ~30 s
def test_sigterm_on_one_rank_stops_every_rank_with_130_and_resume_finishes(tmp_path):
    out = tmp_path / "term"
    done, _ = torchrun(*SMALL, "--out", str(out), entry="term")
    assert done.returncode != 0
    # the ranks stop at the same check; torchrun may SIGTERM the slower one while its interpreter shuts down
    assert "exitcode  : 130" in done.stderr and "SIGKILL" not in done.stderr, done.stderr[-3000:]
    saved = meta(out)
    assert saved["status"] == "interrupted" and saved["epochs_done"] == 1
    assert "torchrun --nproc_per_node=2 -m robustcnn.train --resume" in saved["message"]
    done, _ = torchrun("--resume", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert meta(out)["status"] == "finished" and len(meta(out)["metrics"]) == 2


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_rank_takes_its_share_of_each_global_batch(world_size):
    n, batch = 100, 12  # the last batch (4 images) is cut to a multiple of the world size
    shares = [
        list(Group(torch.device("cpu"), rank, world_size).batches(n, batch, torch.Generator().manual_seed(0)))
        for rank in range(world_size)
    ]
    steps = Group(torch.device("cpu"), 0, world_size).steps_per_epoch(n, batch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # what ImageSet.batches draws
    assert all(len(s) == steps for s in shares)
    for step, parts in enumerate(zip(*shares, strict=True)):
        together = torch.cat([index for index, _, _ in parts])
        expected = order[step * batch : (step + 1) * batch]
        assert torch.equal(together, expected[: len(expected) - len(expected) % world_size])
        assert len({len(index) for index, _, _ in parts}) == 1  # equal shares: DDP's mean is the batch's mean


def test_batch_size_must_split_evenly_over_the_processes():
    with pytest.raises(UsageError, match="--batch-size 63 is the global batch, split over 2 processes: pick a mul"):
        Group(torch.device("cpu"), 0, 2, "gloo").check_batch(63)
    Group(torch.device("cpu"), 0, 2, "gloo").check_batch(64)


def test_a_rank_crops_its_part_as_one_process_crops_the_whole_batch():
    x = torch.rand(10, 3, 8, 8)  # (N, C, H, W)
    whole = augment(x, Augment.CROP_FLIP, torch.Generator().manual_seed(3))
    part = slice(5, 10)
    mine = augment(x[part], Augment.CROP_FLIP, torch.Generator().manual_seed(3), batch=10, part=part)
    assert torch.equal(mine, whole[part])


def test_sync_bn_is_refused_on_cpu_under_torchrun_and_a_no_op_alone():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    with pytest.raises(UsageError, match="--sync-bn needs CUDA"):
        Group(torch.device("cpu"), 0, 2, "gloo").sync_batchnorm(model, True)
    assert Group(torch.device("cpu")).sync_batchnorm(model, True) is model


@pytest.fixture
def one_process_group(tmp_path):
    """A real gloo process group of one, so that DDP's hooks run in this process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield Group(torch.device("cpu"), 0, 1, "gloo")
    dist.destroy_process_group()


@pytest.mark.parametrize(
    ("method", "arch"), [("pgd", "smallcnn"), ("trades", "smallcnn"), ("ibp", "ibpcnn"), ("gaussian", "smallcnn")]
)
def test_attacks_all_reduce_nothing_and_the_loss_all_reduces_once(one_process_group, method, arch):
    """Attacks run on the plain module (weights frozen): no gradient bucket reaches DDP's communication. The
    loss's forward goes through DDP, so its backward averages every weight gradient, once a step."""
    from robustcnn.data import dataset_info
    from robustcnn.models import ModelConfig, create_model
    from robustcnn.train.config import TrainConfig, resolve
    from robustcnn.train.methods import build_method

    info = dataset_info("mnist5k")
    config = TrainConfig.from_dict(
        {"adv": True, "adv_method": method, "arch": arch, "attack_steps": 2, "batch_size": 8}
    )
    config = resolve(config, info)
    model = create_model(ModelConfig.for_dataset(arch, info))
    ddp = one_process_group.wrap(model)
    buckets: list[int] = []  # elements of each bucket all-reduced

    def count(state, bucket):
        buckets.append(bucket.buffer().numel())
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    ddp.register_comm_hook(None, count)
    method_ = build_method(model, config, info, torch.device("cpu"), ddp)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    if hasattr(method_, "perturb"):
        method_.perturb(x, y if method != "trades" else method_.soft_labels(x), config.eps)
        assert buckets == []
    weights = sum(p.numel() for p in model.parameters())
    for step in range(1, 3):  # a second step fails if DDP saw a forward without its backward
        loss, _ = method_.loss(x, y, config.eps)
        loss.backward()
        assert sum(buckets) == step * weights
        assert all(p.grad is not None for p in model.parameters())
        model.zero_grad()
