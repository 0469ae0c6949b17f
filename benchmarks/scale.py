"""Cost as the work grows: more images, more models, bigger models, a resume over many finished cells.

CPU figures on random seeded weights (benchmarks/tiny_nets.py; accuracy is chance and does not matter here) and
synthetic uint8 3x32x32 test sets written as `npz:PATH` files into a temporary folder:

- images: one sweep (FGSM at 2 eps) of a smallcnn-like model on 1k, 10k and 50k images, each in a fresh
  `python -m robustcnn.sweep ... --no-report` process: its wall seconds and its own peak RSS (VmHWM, read
  by that child as it ends). Seconds per 1k images should stay flat (linear cost); peak RSS should grow by
  little more than the images themselves (3,072 bytes each as uint8; a float32 copy is 12,288 bytes more).
- models: 1, 5 and 20 models in one sweep (the same cheap FGSM suite on a few images, so the sweep's own work
  per cell dominates), then the report of that sweep: render seconds (in this process, imports done) and the
  size of report.html.
- pgd: one PGD-10 call through robustcnn's attack against 10 x (forward + backward) of the bare model
  (attack_limit.py's machinery), torchvision resnet18 at 3x32x32 and resnet50 at 3x224x224, at the batch
  size (of a few tried) where the bare passes cost least per image on this CPU.
- resume: a sweep whose cells/ already holds every cell (100,000 by default: 10 models x 100 attacks x 100
  eps), re-run in a fresh process: what planning and skipping cost. The cells are written the way the sweep
  keys them (the sweep's own ChainRunner walks the plan; only the attack is left out), and the re-run is
  checked to have computed none (no cell file newer than the synthesised ones).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.attack_limit import TARGET as PGD_TARGET
from benchmarks.attack_limit import limit_passes, pgd_against_limit
from benchmarks.sweep_speed import suite_toml
from benchmarks.table import Row
from benchmarks.timing import ROOT, sync
from benchmarks.tiny_nets import random_net
from robustcnn.results import MANIFEST_FILE, REPORT_FILE, RESULTS_FILE
from robustcnn.sweep.api import prepare_out
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.runner import Sweep, plan_grids
from robustcnn.sweep.store import Cell, Expected
from robustcnn.sweep.subjects import for_attacks, load_subjects
from robustcnn.sweep.suite import load_suite

NETS = ROOT / "benchmarks" / "tiny_nets.py"  # the models, as a user's FILE.py:BUILDER
FGSM_EPS = (2 / 255, 8 / 255)  # the cheap suite: FGSM at two radii
PGD_EPS = 8 / 255
LINEAR_TARGET = 1.2  # seconds per 1k images at the largest n over those at the smallest
IMAGE_BYTES = 3 * 32 * 32  # one uint8 3x32x32 image
RSS_TARGET = 8192  # bytes of peak RSS per added image: the uint8 set and its subset (6 KB), not a float copy (12 KB)
SELECT_PASSES = 2  # forward + backward passes per candidate batch when choosing the CPU's best batch


@dataclass(frozen=True)
class PgdCase:
    arch: str  # a torchvision architecture
    side: int  # image side, pixels
    classes: int
    batches: tuple[int, ...]  # candidate batch sizes; the one cheapest per image is used
    steps: int  # PGD steps (and forward + backward passes of the limit)
    rounds: int | None  # interleaved rounds; None: the section's repeats


@dataclass(frozen=True)
class ResumePlan:
    models: int
    attacks: int  # PGD entries, differing in their steps (so each has its own cells)
    eps: int  # eps per attack

    @property
    def cells(self) -> int:
        return self.models * (1 + self.attacks * self.eps)  # + each model's clean cell


@dataclass(frozen=True)
class Sizes:
    images: tuple[int, ...]  # test-set sizes of the images figure
    models: tuple[int, ...]  # model counts of the models figure
    models_n: int  # images per model there
    pgd: tuple[PgdCase, ...]
    resume: ResumePlan
    resume_base: ResumePlan  # the same models with one cell per attack: start-up, models, data
    resume_n: int  # images per model in the resumed sweep


FULL = Sizes(
    images=(1_000, 10_000, 50_000),
    models=(1, 5, 20),
    models_n=100,
    pgd=(
        PgdCase("resnet18", 32, 10, (16, 32, 64), 10, None),  # the CIFAR ResNet-18 (3x3 stem), as CIFAR users train it
        PgdCase("wrn-28-10", 32, 10, (8, 16), 10, 3),  # RobustBench's CIFAR-10 size class (~0.1 s per image here)
        PgdCase("torchvision:resnet50", 224, 1000, (4, 8, 16), 10, 5),  # ~0.13 s per image fwd + bwd on 2 cores;
        # one round measured 1.35x and the next two 1.15x and 0.93x (the bare passes alone vary by 15%): a median
    ),
    resume=ResumePlan(10, 100, 100),  # 100,000 attack cells: the caps of a suite (100 attacks x 100 eps)
    resume_base=ResumePlan(10, 1, 1),
    resume_n=20,
)
QUICK = Sizes(
    images=(200, 400),
    models=(1, 2),
    models_n=20,
    pgd=(PgdCase("resnet18", 32, 10, (2,), 2, 1), PgdCase("torchvision:resnet50", 32, 10, (2,), 2, 1)),
    resume=ResumePlan(2, 3, 5),
    resume_base=ResumePlan(2, 1, 1),
    resume_n=10,
)


def measure(quick: bool, repeats: int, seed: int = 0) -> list[Row]:
    sizes = QUICK if quick else FULL
    device = torch.device("cpu")  # the section's figures are CPU figures, whatever else the machine has
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        folder = Path(tmp)
        rows = images_rows(folder, sizes.images, seed, repeats)
        rows += models_rows(folder, sizes.models, sizes.models_n, seed)
        rows += [pgd_row(case, device, case.rounds or repeats, seed) for case in sizes.pgd]
        rows += resume_rows(folder, sizes.resume, sizes.resume_base, sizes.resume_n, seed)
    return rows


# --- data, suites, child processes -------------------------------------------------------------------
def write_npz(path: Path, n: int, seed: int, side: int = 32, classes: int = 10) -> Path:
    """A test-only npz dataset of n random uint8 (3, side, side) images with random labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 3, side, side), dtype=np.uint8)  # (n, 3, side, side), NCHW
    y = rng.integers(0, classes, size=n)
    y[: min(n, classes)] = np.arange(min(n, classes))  # every class present: the class count is read from the labels
    np.savez(path, x_test=x, y_test=y)
    return path


def write_fgsm_suite(path: Path, grids: list[tuple[float, ...]]) -> Path:
    """One FGSM (Linf) entry per grid; entries differ by grid, so each has its own cells."""
    entries = [{"name": f"fgsm-{i}", "type": "fgsm", "norm": "inf", "eps": list(g)} for i, g in enumerate(grids)]
    path.write_text(suite_toml({"description": "scale benchmark: FGSM only"}, entries), encoding="utf-8")
    return path


def model_specs(count: int) -> list[str]:
    return [f"{NETS}:smallcnn@model-arg=seed={i}@name=m{i}" for i in range(count)]


@dataclass(frozen=True)
class Child:
    seconds: float  # wall time, start to exit
    peak_rss: int  # bytes: the child's own peak resident set size (VmHWM; benchmarks/peak_rss.py says why)


def run_child(argv: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> Child:
    """Runs `python -m MODULE ...` (argv) to its end, RuntimeError unless it exits with a code in `ok`; its peak
    RSS is read by the child itself as it ends (benchmarks/peak_rss.py), not from wait4."""
    if argv[1] != "-m":
        raise ValueError(f"run_child runs `python -m MODULE ...`, not {argv[:3]}")
    peak = log.with_suffix(".peak")
    argv = [argv[0], "-m", "benchmarks.peak_rss", str(peak), *argv[2:]]
    started = time.perf_counter()
    with open(log, "wb") as f:
        code = subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if code not in ok:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(argv[3:6])} ... exited {code}: " + " / ".join(tail))
    return Child(seconds, int(peak.read_text()))


def sweep_argv(models: list[str], data: Path, suite: Path, n: int, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "robustcnn.sweep", *models, "--dataset", f"npz:{data}", "--suite", str(suite),
        "--n", str(n), "--out", str(out), "--device", "cpu", "--no-report", *extra,
    ]  # fmt: skip


def cell_seconds(out: Path, kinds: tuple[str, ...] = ("clean", "attack")) -> tuple[float, int]:
    """(seconds, count) of the sweep's distinct cells of these kinds, from its results.csv."""
    results = pd.read_csv(out / RESULTS_FILE)
    cells = results[results.kind.isin(kinds) & results.cell.notna()].drop_duplicates("cell")
    return float(cells.seconds.sum()), len(cells)


# --- images --------------------------------------------------------------------------------------------
def images_rows(folder: Path, sizes: tuple[int, ...], seed: int, rounds: int) -> list[Row]:
    """Each size swept `rounds` times, the sizes interleaved round by round (a cell of 1k images takes ~0.2 s, so
    one round is noise); medians of the wall and cell seconds, the largest peak RSS."""
    suite = write_fgsm_suite(folder / "fgsm.toml", [FGSM_EPS])
    data = {n: write_npz(folder / f"images-{n}.npz", n, seed) for n in sizes}
    runs: dict[int, list[tuple[Child, float, int]]] = {n: [] for n in sizes}
    for r in range(rounds):
        for n in sizes:
            out = folder / f"images-{n}-{r}"
            child = run_child(sweep_argv(model_specs(1), data[n], suite, n, out), folder / f"images-{n}-{r}.log")
            runs[n].append((child, *cell_seconds(out)))
            shutil.rmtree(out)
    for path in data.values():
        path.unlink()  # 150 MB at 50k
    measured = {
        n: (
            Child(statistics.median(c.seconds for c, _, _ in got), max(c.peak_rss for c, _, _ in got)),
            statistics.median(cells for _, cells, _ in got),
            got[0][2],
        )
        for n, got in runs.items()
    }
    rows = []
    what = "FGSM x 2 eps, random smallcnn, uint8 3x32x32, fresh `python -m robustcnn.sweep --no-report`"
    for n, (child, cells, count) in measured.items():
        rows.append(
            Row("scale", f"sweep of {n:,} images: wall seconds per 1k images ({what})", child.seconds / n * 1000,
                "s / 1k images", seconds=child.seconds, repeats=rounds,
                note=f"{count} clean + attack cells: {cells:.3g} s ({cells / n * 1000:.3g} s per 1k images); "
                     "wall includes start-up (imports, model, data)")
        )  # fmt: skip
        rows.append(
            Row("scale", f"sweep of {n:,} images: peak RSS of the sweep process", child.peak_rss / 2**20, "MiB",
                repeats=rounds, note="VmHWM of that process (benchmarks/peak_rss.py), the largest of the rounds")
        )  # fmt: skip
    small, large = min(measured), max(measured)
    per_1k = {n: measured[n][1] / n for n in (small, large)}
    growth = (measured[large][0].peak_rss - measured[small][0].peak_rss) / (large - small)
    rows += [
        Row("scale", f"cells' seconds per image at {large:,} / at {small:,} images (1 = linear in n)",
            per_1k[large] / per_1k[small], "x", target=f"<= {LINEAR_TARGET:g}", seconds=measured[large][1],
            baseline=f"{small:,} images", baseline_seconds=measured[small][1], repeats=rounds,
            note="clean + attack cells from results.csv (the probe's fixed 50 examples left out)"),
        Row("scale", f"peak RSS growth per image, {small:,} -> {large:,} images", growth, "bytes / image",
            target=f"<= {RSS_TARGET}", repeats=rounds,
            note=f"one uint8 image is {IMAGE_BYTES:,} bytes, as float32 {4 * IMAGE_BYTES:,}: the test set and its "
                 "subset as uint8 take ~6 KB per image; a float copy of the images adds 12 KB"),
    ]  # fmt: skip
    return rows


# --- models and the report -----------------------------------------------------------------------------
def models_rows(folder: Path, counts: tuple[int, ...], n: int, seed: int) -> list[Row]:
    from robustcnn.report import write_report

    suite = write_fgsm_suite(folder / "fgsm.toml", [FGSM_EPS])
    data = write_npz(folder / f"models-{n}.npz", n, seed)
    rows, walls = [], {}
    for count in counts:
        out = folder / f"models-{count}"
        child = run_child(sweep_argv(model_specs(count), data, suite, n, out), folder / f"models-{count}.log")
        _, cells = cell_seconds(out, ("clean", "attack", "probe"))
        walls[count] = (child.seconds, cells)
        started = time.perf_counter()
        write_report(out)
        render = time.perf_counter() - started
        page = (out / REPORT_FILE).stat().st_size
        rows += [
            Row("scale", f"{count} model(s) in one sweep: wall seconds per cell ({cells} cells, n={n}, FGSM x 2 eps)",
                child.seconds / cells, "s / cell", seconds=child.seconds, repeats=1,
                note="clean, 2 FGSM and 1 probe cell per model; wall includes start-up"),
            Row("scale", f"report of {count} model(s): render seconds", render, "s", seconds=render, repeats=1,
                note="robustcnn.report.write_report in this process, imports done"),
            Row("scale", f"report of {count} model(s): report.html size", page, "bytes", repeats=1),
        ]  # fmt: skip
    (few, few_cells), (many, many_cells) = walls[min(walls)], walls[max(walls)]
    rows.append(
        Row("scale", f"sweep seconds per added cell, {min(walls)} -> {max(walls)} models",
            (many - few) / (many_cells - few_cells), "s / cell", seconds=many, baseline=f"{min(walls)} model(s)",
            baseline_seconds=few, repeats=1, note="the sweep's cost per cell without start-up: model, checks, cells")
    )  # fmt: skip
    return rows


# --- PGD against its limit on bigger models ------------------------------------------------------------
def best_batch(model: torch.nn.Module, case: PgdCase, device: torch.device, seed: int) -> tuple[int, dict[int, float]]:
    """The candidate batch with the cheapest forward + backward per image, and each candidate's seconds per image."""
    per_image = {}
    for batch in case.batches:
        x, y = _batch(case, batch, seed)
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        limit_passes(model, x, y, 1)  # warm-up
        sync(device)
        started = time.perf_counter()
        limit_passes(model, x, y, SELECT_PASSES)
        sync(device)
        per_image[batch] = (time.perf_counter() - started) / (SELECT_PASSES * batch)
    return min(per_image, key=per_image.get), per_image


def _batch(case: PgdCase, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 3, case.side, case.side), dtype=np.float32)  # (B, 3, side, side) in [0, 1]
    return x, rng.integers(0, case.classes, size=batch)


def _arch_label(arch: str) -> str:
    return arch if arch.startswith("torchvision:") else f"robustcnn {arch}"


def pgd_row(case: PgdCase, device: torch.device, rounds: int, seed: int) -> Row:
    model = for_attacks(random_net(case.arch, seed, case.classes, case.side), device)  # as the sweep holds it
    batch, per_image = best_batch(model, case, device, seed)
    x, y = _batch(case, batch, seed)
    timed = pgd_against_limit(model, case.classes, x, y, PGD_EPS, case.steps, device, rounds)
    tried = ", ".join(f"B={b}: {s * 1000:.3g} ms" for b, s in per_image.items())
    return Row(
        "scale", f"one PGD-{case.steps} call, {_arch_label(case.arch)} 3x{case.side}x{case.side} "
        f"({case.classes} classes, random weights), batch {batch}, vs {case.steps} x (fwd + bwd wrt input)",
        timed["ours"].median / timed["limit"].median, "x limit", target=f"<= {PGD_TARGET:g}",
        seconds=timed["ours"].median, spread=timed["ours"].spread,
        baseline=f"{case.steps} x (forward + backward) in PyTorch", baseline_seconds=timed["limit"].median,
        baseline_spread=timed["limit"].spread, repeats=rounds,
        note=f"batch = the cheapest per image of the bare passes ({tried} per image); robustcnn pgd -> ART",
    )  # fmt: skip


# --- resume --------------------------------------------------------------------------------------------
def write_resume_suite(path: Path, plan: ResumePlan) -> Path:
    """`plan.attacks` PGD entries that differ only in their steps (so each has its own cells) over one grid of
    `plan.eps` radii in (0, 0.1], as a suite of many attacks shares its eps; the cells are never computed."""
    grid = [round(0.1 * (j + 1) / plan.eps, 9) for j in range(plan.eps)]
    entries = [
        {"name": f"pgd-{i + 1}", "type": "pgd", "norm": "inf", "eps": grid, "steps": i + 1} for i in range(plan.attacks)
    ]
    path.write_text(suite_toml({"description": "scale benchmark: resume"}, entries), encoding="utf-8")
    return path


def synthesise_sweep(out: Path, models: list[str], data: Path, suite: Path, n: int, seed: int) -> int:
    """A finished sweep folder for this command without computing a cell: the sweep's own runner walks the plan
    and keys every cell as the sweep does; each cell holds every example correct. Returns the cells written."""
    config = SweepConfig.from_dict(
        {"suite": str(suite), "n": n, "seed": seed, "device": "cpu", "dataset": f"npz:{data}", "probe": 0,
         "gallery": 0, "out": str(out), "report": False}
    )  # fmt: skip
    suite_ = load_suite(config.suite)
    subjects = load_subjects(models, config, suite_.n, torch.device("cpu"))
    writer = CellWriter(config, suite_, subjects, prepare_out(out), plan_grids(subjects, suite_))
    writer.write_manifest_start()
    for subject in subjects:
        writer.start(subject)
    for chain in writer.plan:
        writer.run_chain(chain)
    return writer.written


class CellWriter(Sweep):
    """The sweep's runner with its cells made up instead of computed: plan, keys and files as the sweep's own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.written = 0
        self.templates: dict[str, bytes] = {}  # one compressed file per distinct content, copied under every key

    def cell(self, subject, spec, row_kind, parts, compute, expected: Expected) -> Cell:
        key, _ = self._keys(subject, **parts)
        rows = [{expected.name: g, "n": expected.n, "n_correct": expected.n, "seconds": 0.0} for g in expected.grid]
        cell = Cell(rows, np.ones((len(rows), expected.n), dtype=bool), {})
        text = json.dumps([rows, expected.n])
        if text not in self.templates:
            self.store.save(key, cell)
            self.templates[text] = self.store.path(key).read_bytes()
        else:
            self.store.path(key).write_bytes(self.templates[text])
        self.written += 1
        return cell

    def unbroken(self, subject, spec, eps) -> np.ndarray:
        return np.ones(len(subject.subset), dtype=bool)  # the keys do not depend on which examples survive


def resume_seconds(folder: Path, name: str, plan: ResumePlan, n: int, seed: int) -> tuple[Child, int]:
    """Writes a finished sweep of `plan`, re-runs its command in a fresh process; (that process, cells it found)."""
    data = write_npz(folder / f"{name}.npz", n, seed)
    suite = write_resume_suite(folder / f"{name}.toml", plan)
    out, models = folder / name, model_specs(plan.models)
    written = synthesise_sweep(out, models, data, suite, n, seed)
    if written != plan.cells:
        raise RuntimeError(f"{name}: wrote {written} cells, the plan has {plan.cells}")
    stamp = max(p.stat().st_mtime_ns for p in (out / "cells").glob("*.npz"))
    time.sleep(0.01)  # a cell written by the re-run has a later modification time than every synthesised one
    argv = sweep_argv(models, data, suite, n, out, "--probe", "0", "--gallery", "0", "--seed", str(seed))
    child = run_child(argv, folder / f"{name}.log")
    computed = [p.name for p in (out / "cells").glob("*.npz") if p.stat().st_mtime_ns > stamp]
    status = json.loads((out / MANIFEST_FILE).read_text())["status"]
    if computed or status != "finished":
        raise RuntimeError(f"{name}: the resumed sweep computed {len(computed)} cell(s) (status {status}); "
                           "the synthesised cells were not found")  # fmt: skip
    return child, written


def resume_rows(folder: Path, plan: ResumePlan, base: ResumePlan, n: int, seed: int) -> list[Row]:
    child, cells = resume_seconds(folder, "resume", plan, n, seed)
    small, small_cells = resume_seconds(folder, "resume-base", base, n, seed)
    per_1k = (child.seconds - small.seconds) / (cells - small_cells) * 1000
    where = f"{plan.models} models x {plan.attacks} PGD attacks x {plan.eps} eps, n={n}, --probe 0 --gallery 0"
    return [
        Row("scale", f"resume of a sweep with {cells:,} finished cells: plan and skip, fresh process ({where})",
            child.seconds, "s", seconds=child.seconds, repeats=1, note="checked: no cell computed; wall includes "
            f"start-up; peak RSS {child.peak_rss / 2**20:.0f} MiB"),
        Row("scale", f"resume: seconds per 1k finished cells ({cells:,} vs {small_cells} cells)", per_1k,
            "s / 1k cells", seconds=child.seconds, baseline=f"{base.attacks} attack x {base.eps} eps per model",
            baseline_seconds=small.seconds, repeats=1, note="start-up, models and data taken out"),
    ]  # fmt: skip
