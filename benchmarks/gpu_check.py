"""python -m benchmarks.gpu_check --out benchmarks/results/gpu: what only a CUDA GPU can show (make gpu-check).

Offline, on synthetic CIFAR-shaped data (uint8 3x32x32, 10 classes whose images are a class template plus
noise, so one epoch learns them), under 8 minutes on one H200:

1. train: one epoch of PGD training (`--adv`) with AMP (`--amp on`, bf16) of resnet18; seconds per epoch.
2. agree: the same sweep (FGSM and PGD-10 at 3 eps, n=1000) of that model on CUDA and on the CPU (float32);
   per cell, the per-example flags (cells/, same keys on both) may differ on at most 1 example in 100.
3. pgd-limit: one PGD-40 call against 40 x (forward + backward) at the GPU's batch size (attack_limit.py).
4. oom-backoff: the sweep in a process whose CUDA allocator is capped (benchmarks/capped_sweep.py) with a batch
   too large for the cap: it must finish, record the back-off in manifest.json (`batch_backoffs` of its model)
   and give the numbers of a run at a batch that fits (bit for bit on a CPU; here within 1 example in 100 per
   cell, since cuDNN may choose another convolution algorithm for another batch size).

Writes gpu-check.md and gpu-check.json (figures, checks, machine: GPU, torch, CUDA) to --out; exits 1 with one
line per failed check. Without CUDA it says so and exits 2. `--device cpu --quick` runs every step but the
memory cap at smoke sizes on the CPU (both sweeps on the CPU): only for the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.attack_limit import TARGET as PGD_TARGET
from benchmarks.attack_limit import limit_passes, pgd_against_limit
from benchmarks.scale import run_child
from benchmarks.sweep_speed import suite_toml
from benchmarks.timing import machine
from robustcnn.fileio import write_json, write_text
from robustcnn.results import MANIFEST_FILE, RESULTS_FILE
from robustcnn.sweep.store import CellStore

EXIT_FAILED, EXIT_NO_GPU = 1, 2
NO_GPU = "gpu-check needs a CUDA GPU; none found"
EPS = (2 / 255, 4 / 255, 8 / 255)  # the agreement sweep's grid, Linf
AGREE = 0.01  # per cell, at most this share of examples may get a different flag on CUDA and on the CPU
CAP_BATCHES = 4  # the capped allocator holds this many times the peak memory of one fitting batch's gradient step
SEED = 0


@dataclass(frozen=True)
class Sizes:
    arch: str  # robustcnn architecture trained
    train: int  # training images (one epoch)
    train_batch: int
    val: int  # training images held out for validation (the training guard's PGD-10 each epoch)
    n: int  # test images each sweep attacks
    pgd_steps: int  # PGD steps in the sweeps
    limit_steps: int  # PGD steps of the single call against its limit
    limit_batch: int | None  # its batch; None: the sweep's default on the device
    fitting_batch: int  # the back-off comparison's batch that fits
    too_large: int  # the batch given to the capped sweep


FULL = Sizes("resnet18", 20_000, 512, 256, 1000, 10, 40, None, 64, 1024)
QUICK = Sizes("smallcnn", 256, 64, 32, 64, 2, 2, 16, 16, 64)


@dataclass
class Check:
    name: str
    status: str  # pass, fail, skipped
    message: str


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, ok: bool, message: str) -> None:
        self.checks.append(Check(name, "pass" if ok else "fail", message))

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]


# --- data and commands ---------------------------------------------------------------------------------
def write_data(path: Path, train: int, test: int, classes: int = 10) -> Path:
    """Class template (3, 32, 32) + uniform noise (70 / 30), as uint8: learnable in one epoch, not trivially robust."""
    rng = np.random.default_rng(SEED)
    templates = rng.random((classes, 3, 32, 32), dtype=np.float32)

    def images(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(count) % classes
        x = 0.7 * templates[y] + 0.3 * rng.random((count, 3, 32, 32), dtype=np.float32)  # (count, 3, 32, 32)
        return (x * 255).round().astype(np.uint8), y

    x_train, y_train = images(train)
    x_test, y_test = images(test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def write_suite(path: Path, pgd_steps: int) -> Path:
    entries = [
        {"name": "fgsm", "type": "fgsm", "norm": "inf", "eps": list(EPS)},
        {"name": "pgd", "type": "pgd", "norm": "inf", "eps": list(EPS), "steps": pgd_steps},
    ]
    path.write_text(suite_toml({"description": "gpu-check: FGSM and PGD, Linf"}, entries), encoding="utf-8")
    return path


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run(argv: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> float:
    """Runs a command to its end (RuntimeError with its last lines if it fails); its wall seconds."""
    return run_child(argv, log, ok).seconds


# --- the steps -----------------------------------------------------------------------------------------
def train(folder: Path, data: Path, sizes: Sizes, device: str, report: Report) -> Path:
    out = folder / "run"
    argv = python(
        "robustcnn.train", "--dataset", f"npz:{data}", "--arch", sizes.arch, "--adv", "--amp",
        "on" if device.startswith("cuda") else "off", "--epochs", "1", "--eps-warmup", "0", "--batch-size",
        str(sizes.train_batch), "--val-size", str(sizes.val), "--device", device, "--out", str(out),
        "--seed", str(SEED),
    )  # fmt: skip
    wall = run(argv, folder / "train.log", ok=(0, 1))  # 1: finished, but the guard found no robust epoch (one epoch)
    metrics = (out / "metrics.csv").read_text().splitlines()
    header, last = metrics[0].split(","), metrics[-1].split(",")
    epoch = float(last[header.index("seconds")])
    report.figures["train"] = {
        "arch": sizes.arch, "images": sizes.train, "batch_size": sizes.train_batch, "method": "pgd (--adv), AMP",
        "seconds_per_epoch": epoch, "wall_seconds": round(wall, 2),
    }  # fmt: skip
    report.check("train", epoch > 0, f"one PGD-trained epoch of {sizes.arch} on {sizes.train:,} images: {epoch:.1f} s")
    return out


def sweep_argv(model: Path, data: Path, suite: Path, sizes: Sizes, out: Path, device: str, batch: int | None):
    argv = [str(model), "--dataset", f"npz:{data}", "--suite", str(suite), "--n", str(sizes.n), "--out", str(out)]
    argv += ["--device", device, "--no-report", "--seed", str(SEED)]
    return argv + (["--batch-size", str(batch)] if batch else [])


def flags_by_row(out: Path) -> dict[tuple[str, str, float], np.ndarray]:
    """(kind, attack, eps) -> per-example flags of that row, read from the sweep's cells."""
    import pandas as pd

    results = pd.read_csv(out / RESULTS_FILE)
    store, rows = CellStore(out), {}
    for key, part in results[results.kind.isin(["attack", "probe"]) & results.cell.notna()].groupby("cell"):
        cell = store.load(key)
        for values, flags in zip(cell.values, cell.flags, strict=True):
            rows[(part.kind.iloc[0], part.attack.iloc[0], round(float(values["eps"]), 9))] = flags
    return rows


def agree(folder: Path, model: Path, data: Path, suite: Path, sizes: Sizes, device: str, report: Report) -> None:
    outs, seconds = {}, {}
    for label, where in (("device", device), ("cpu", "cpu")):  # two folders even when device is the CPU (smoke)
        outs[label] = folder / f"sweep-{label}"
        argv = python("robustcnn.sweep", *sweep_argv(model, data, suite, sizes, outs[label], where, None))
        seconds[where if label == "device" else "cpu"] = run(argv, folder / f"sweep-{label}.log")
    ours, cpu = flags_by_row(outs["device"]), flags_by_row(outs["cpu"])
    if ours.keys() != cpu.keys():
        report.check("agree", False, f"rows differ: {sorted(ours.keys() ^ cpu.keys())}")
        return
    rows = {
        f"{kind} {attack} @ {eps:.4g}": {
            "share_differing": float(np.mean(ours[k] != cpu[k])),
            f"accuracy {device}": float(ours[k].mean()),
            "accuracy cpu": float(cpu[k].mean()),
        }
        for k in sorted(ours)
        for kind, attack, eps in [k]
    }
    largest = max(v["share_differing"] for v in rows.values())
    report.figures["agree"] = {"sweep_seconds": seconds, "rows": rows, "largest_share_differing": largest}
    bad = [name for name, v in rows.items() if v["share_differing"] > AGREE]
    report.check(
        "agree",
        not bad,
        f"per-example flags {device} vs cpu over {len(rows)} rows: at most {largest:.2%} differ (limit {AGREE:.0%})"
        + (f"; over the limit: {', '.join(bad)}" if bad else ""),
    )


def load_trained(run_dir: Path, device: torch.device) -> torch.nn.Module:
    from robustcnn.runs import load_run
    from robustcnn.sweep.subjects import for_attacks

    return for_attacks(load_run(run_dir).model("best", device), device)


def test_batch(data: Path, batch: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data) as arrays:
        x, y = arrays["x_test"][:batch], arrays["y_test"][:batch]
    return (x.astype(np.float32) / 255), y.astype(np.int64)  # (batch, 3, 32, 32) in [0, 1], (batch,)


def pgd_limit(model: torch.nn.Module, data: Path, sizes: Sizes, device: torch.device, report: Report) -> None:
    from robustcnn.sweep.subjects import default_batch_size

    batch = sizes.limit_batch or default_batch_size(device)
    x, y = test_batch(data, batch)
    timed = pgd_against_limit(model, 10, x, y, 8 / 255, sizes.limit_steps, device, 3)
    ratio = timed["ours"].median / timed["limit"].median
    report.figures["pgd_limit"] = {
        "steps": sizes.limit_steps, "batch": len(x), "ours_seconds": timed["ours"].median,
        "limit_seconds": timed["limit"].median, "ratio": ratio,
    }  # fmt: skip
    report.check(
        "pgd-limit", ratio <= PGD_TARGET, f"one PGD-{sizes.limit_steps} call at batch {len(x)}: {ratio:.3g} x "
        f"{sizes.limit_steps} x (forward + backward) (target <= {PGD_TARGET:g})",
    )  # fmt: skip


def peak_bytes(model: torch.nn.Module, data: Path, batch: int, device: torch.device) -> int:
    """Peak allocator bytes of one input-gradient step at `batch`: what the cap is sized from."""
    x, y = (torch.from_numpy(a).to(device) for a in test_batch(data, batch))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    limit_passes(model, x, y, 1)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def oom_backoff(folder: Path, run_dir: Path, data: Path, suite: Path, sizes: Sizes, device: torch.device, report):
    """On CUDA: the capped sweep at a batch too large against one at a batch that fits. On the CPU (smoke test) the
    same two sweeps without a cap: the comparison runs, the back-off checks are skipped."""
    capped, fitting = folder / "capped", folder / "fitting"
    argv = sweep_argv(run_dir, data, suite, sizes, capped, str(device), sizes.too_large)
    if device.type == "cuda":
        cap = CAP_BATCHES * peak_bytes(load_trained(run_dir, device), data, sizes.fitting_batch, device)
        fraction = cap / torch.cuda.get_device_properties(device).total_memory
        torch.cuda.empty_cache()
        run(python("benchmarks.capped_sweep", f"{fraction:.6f}", *argv), folder / "capped.log")
    else:
        cap, fraction = 0, 1.0
        run(python("robustcnn.sweep", *argv), folder / "capped.log")
    argv = sweep_argv(run_dir, data, suite, sizes, fitting, str(device), sizes.fitting_batch)
    run(python("robustcnn.sweep", *argv), folder / "fitting.log")
    manifest = json.loads((capped / MANIFEST_FILE).read_text())
    backoffs = [b for m in manifest.get("models", []) for b in (m.get("batch_backoffs") or [])]
    report.figures["oom_backoff"] = {"cap_bytes": cap, "fraction": fraction, "batch": sizes.too_large,
                                     "status": manifest.get("status"), "batch_backoffs": backoffs}  # fmt: skip
    report.check(
        "oom-backoff-finished",
        manifest.get("status") == "finished",
        f"capped sweep at batch {sizes.too_large} ({cap / 2**30:.2f} GiB cap): status {manifest.get('status')}",
    )
    if device.type != "cuda":
        report.checks.append(Check("oom-backoff-recorded", "skipped", "the memory cap needs CUDA; nothing to back off"))
    else:
        report.check(
            "oom-backoff-recorded",
            bool(backoffs),
            f"batch_backoffs in manifest.json: {backoffs}"
            if backoffs
            else "no batch_backoffs in manifest.json's models: the batch was not backed off (or not recorded)",
        )
    mine, theirs = flags_by_row(capped), flags_by_row(fitting)
    if mine.keys() != theirs.keys():
        report.check("oom-backoff-numbers", False, f"rows differ: {sorted(mine.keys() ^ theirs.keys())}")
        return
    # Random starts are per example, so only floating point can differ: bit for bit on a CPU (tests/test_batching.py);
    # cuDNN may choose another convolution algorithm per batch size, so a borderline example may flip (<= AGREE).
    differing = {k: int(np.sum(mine[k] != theirs[k])) for k in mine}
    largest = max((d / len(mine[k]) for k, d in differing.items()), default=0.0)
    report.figures["oom_backoff"]["examples_differing"] = sum(differing.values())
    report.check(
        "oom-backoff-numbers",
        largest <= AGREE,
        f"per-example flags at batch {sizes.too_large} (backed off) vs {sizes.fitting_batch}: "
        f"{sum(differing.values())} differ over {len(mine)} rows (at most {largest:.2%} of a row; limit {AGREE:.0%})",
    )


# --- the whole check -----------------------------------------------------------------------------------
def gpu_check(out: Path, device: torch.device, quick: bool) -> Report:
    sizes = QUICK if quick else FULL
    report = Report()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp)
        data = write_data(folder / "data.npz", sizes.train + sizes.val, max(sizes.n, sizes.limit_batch or 1024))
        suite = write_suite(folder / "suite.toml", sizes.pgd_steps)
        run_dir = _step(report, "train", lambda: train(folder, data, sizes, str(device), report))
        if run_dir is not None:
            _step(report, "agree", lambda: agree(folder, run_dir, data, suite, sizes, str(device), report))
            _step(report, "pgd-limit", lambda: pgd_limit(load_trained(run_dir, device), data, sizes, device, report))
            _step(report, "oom-backoff", lambda: oom_backoff(folder, run_dir, data, suite, sizes, device, report))
    report.figures["seconds"] = round(time.perf_counter() - started, 1)
    write(out, report, device)
    return report


def _step(report: Report, name: str, action):
    """One step; an exception fails its check (one line) and the next steps still run."""
    try:
        return action()
    except Exception as error:  # a step's failure is a finding, not a crash of the whole check
        lines = str(error).strip().splitlines() or [type(error).__name__]
        report.checks.append(Check(name, "fail", f"{type(error).__name__}: {lines[-1]}"))
        return None


def describe(device: torch.device) -> dict[str, Any]:
    header = machine(device)
    header["cuda"] = torch.version.cuda or "none"
    header["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
    return header


def write(out: Path, report: Report, device: torch.device) -> None:
    header = describe(device)
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": header, "figures": report.figures, "checks": [asdict(c) for c in report.checks]}
    write_json(out / "gpu-check.json", record)
    lines = ["# robustcnn gpu-check", ""] + [f"- **{k}**: {v}" for k, v in header.items()]
    lines += ["", "| check | status | message |", "|---|---|---|"]
    lines += [f"| {c.name} | {c.status} | {c.message.replace('|', '/')} |" for c in report.checks]
    lines += ["", "## Figures", "", "```json", json.dumps(report.figures, indent=2), "```"]
    write_text(out / "gpu-check.md", "\n".join(lines) + "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/gpu", help="folder for gpu-check.md and gpu-check.json")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N; cpu only with --quick (the smoke test)")
    p.add_argument("--quick", action="store_true", help="smoke sizes (seconds); figures mean nothing")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.quick:
        print("gpu-check: --device cpu is only for the smoke test: add --quick", file=sys.stderr)
        return EXIT_NO_GPU
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return EXIT_NO_GPU
    report = gpu_check(Path(args.out), device, args.quick)
    for check in report.checks:
        print(f"{check.name}: {check.status}: {check.message}")
    for check in report.failed():
        print(f"gpu-check failed: {check.name}: {check.message}", file=sys.stderr)
    return EXIT_FAILED if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
