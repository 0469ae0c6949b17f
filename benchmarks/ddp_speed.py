"""Training under torchrun on CPU: an epoch of PGD-10 AT with 2 processes x 1 thread (DDP over gloo) against
1 process x 2 threads, the same global batch, both started as a user would (`torchrun ... -m robustcnn.train`,
`python -m robustcnn.train`).

Each variant trains a fresh 2-epoch run; the figure is its second epoch (rank 0's `seconds` in run.json: training
plus the sharded validation), so start-up and first-call costs stay out. Start-up is shown apart (the whole
command's wall time). On 2 cores this measures what DDP costs or saves against intra-op threading, not how it
scales: on a multi-GPU node each process has a GPU of its own, and the command in NOTE measures that.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.table import Row
from benchmarks.timing import interleaved

CORES = 2  # the CPU budget both variants share: 2 x 1 thread against 1 x 2 threads
NOTE = (
    "DDP-train section: CPU-only, gloo, two processes of one thread against one process of two threads on the same "
    "2 cores and the same global batch (64, so 32 per process). An attack step is small on MNIST, so per-step "
    "synchronisation (one gradient all-reduce, through the loopback) weighs more than it would on a GPU. On a "
    "multi-GPU node (nccl, one process per GPU, each attacking and training on its own share of the batch) an epoch "
    "should take about 1/N of one GPU's time less the all-reduce of the weight gradients, which is small beside "
    "the k+1 forward/backward passes of PGD-k AT; measure it there with "
    "`torchrun --standalone --nproc_per_node=N -m robustcnn.train --adv --epochs 2 --eps-warmup 0 --out runs/ddp-N` "
    "against the same command with --nproc_per_node=1, comparing epoch 2's `seconds` in each run.json."
)


def command(processes: int, flags: list[str], out: Path) -> list[str]:
    train = ["-m", "robustcnn.train", *flags, "--device", "cpu", "--out", str(out)]
    if processes == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *train]


def one_run(processes: int, flags: list[str]) -> dict[str, float]:
    """Seconds of the second epoch and of the whole command, for a fresh run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(CORES // processes)}
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        out = Path(tmp) / "run"
        started = time.perf_counter()
        done = subprocess.run(command(processes, flags, out), capture_output=True, text=True, env=env, timeout=3600)
        wall = time.perf_counter() - started
        if done.returncode not in (0, 1):  # 1: trained but not robust (a quick run), still timed
            raise RuntimeError(f"training with {processes} process(es) failed: {done.stderr[-2000:]}")
        metrics = json.loads((out / "run.json").read_text())["metrics"]
    return {"epoch": metrics[-1]["seconds"], "wall": wall}


def measure(settings: dict, attack_steps: int, repeats: int) -> list[Row]:
    """`settings`: train_size (None: all) and val_size; PGD-k AT with k = attack_steps, 2 epochs, no warm-up."""
    flags = ["--dataset", "mnist5k", "--adv", "--attack-steps", str(attack_steps), "--epochs", "2"]
    flags += ["--eps-warmup", "0", "--val-size", str(settings["val_size"])]
    if settings.get("train_size"):
        flags += ["--train-size", str(settings["train_size"])]
    variants = {"one": lambda _: one_run(1, flags), "two": lambda _: one_run(2, flags)}
    timed = interleaved(variants, repeats, torch.device("cpu"))
    epoch = {name: statistics.median(v["epoch"] for v in t.values) for name, t in timed.items()}
    wall = {name: statistics.median(v["wall"] for v in t.values) for name, t in timed.items()}
    spread = {name: " / ".join(f"{v['epoch']:.3g}" for v in t.values) for name, t in timed.items()}
    size = "mnist5k" + (f", {settings['train_size']} images" if settings.get("train_size") else "")
    label = f"PGD-{attack_steps} AT epoch ({size}, batch 64)"
    return [
        Row("ddp-train", f"{label}: 1 process x 2 threads / torchrun 2 processes x 1 thread (gloo), CPU-only",
            epoch["one"] / epoch["two"], "x faster", seconds=epoch["two"], spread=spread["two"],
            baseline="1 process x 2 threads", baseline_seconds=epoch["one"], baseline_spread=spread["one"],
            repeats=repeats, note="epoch 2 incl. validation; above 1: DDP beats intra-op threads on these cores"),
        Row("ddp-train", "whole 2-epoch command, torchrun 2 processes (start-up, rendezvous, imports included)",
            wall["two"], "s", seconds=wall["two"], baseline="1 process", baseline_seconds=wall["one"],
            repeats=repeats, note="context"),
    ]  # fmt: skip
