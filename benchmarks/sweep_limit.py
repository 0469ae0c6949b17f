"""The whole sweep against its gradient-work limit: what a sweep costs beyond the passes through the model.

The limit of a sweep is the work it cannot avoid, timed as plain PyTorch at its best: every input gradient
its attacks take (forward + backward of one image with frozen weights) and every forward-only pass it needs
(clean predictions, judging each adversarial example, black-box queries), each at the per-image time of a
full batch of the sweep's size on the same model and device. Everything else - the attack's own per-step
work in ART, the hook that sees every iterate, batch remainders, files, checks, start-up inside the call -
is the overhead the ratios show.

The work is counted, not estimated: one untimed run of the same sweep (same seed, so the same random starts
and the same survivors) counts the images of every outermost forward pass, under autograd (a gradient
step) or not, split into the attack and probe cells and the rest (model checks, the clean cell, the gallery).
For FGSM and PGD that count equals survivors x steps (tested in tests/test_benchmarks.py).

Attack time is the sum of the attack and probe cells' seconds (results.csv); wall time is the whole
`robustcnn.sweep(...)` call in this process (models and data loaded, checks, every cell, files written;
the report is off: it is timed in the report section). Rounds are interleaved with the per-image timings,
so a burst of load hits the sweep and its limit alike.
"""

from __future__ import annotations

import compileall
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import tomllib
import torch
import torch.nn.functional as F

import robustcnn
from benchmarks.sweep_speed import suite_toml
from benchmarks.table import Row
from benchmarks.timing import sync
from robustcnn.attacks import ATTACKS
from robustcnn.runs import load_run
from robustcnn.sweep import runner
from robustcnn.sweep.suite import find_suite

ATTACK_TARGET = 1.15  # the standard sweep's attack cells may cost at most this many times their limit
WALL_TARGET = 1.25  # ... and the whole call this many times the limit of all its work
LEAN_ATTACK_TARGET = 1.10  # the everyday sweep (FGSM + PGD-40, 6 eps, no probes) on the robust model: cells ...
LEAN_WALL_TARGET = 1.15  # ... and the whole in-process call
STARTUP_TARGET = 0.5  # seconds a sweep command spends beyond `import torch` and its cells
# full batches per per-image timing, taken before every cell (~0.4 s on 2 CPU cores). 4 (~0.1 s) left the limits of
# the everyday sweep's cells 8-16% apart for the same work in one round (benchmarks/results/startup: per-cell.txt)
TIMING_PASSES = 12
ATTACK_KINDS = ("attack", "probe")  # the cells whose seconds are the attack time


@dataclass
class Work:
    """Images through the model, per cell (by cache key; "" is everything outside cells), by kind of pass."""

    gradient: dict[str, int] = field(default_factory=dict)  # images of forward passes under autograd
    forward: dict[str, int] = field(default_factory=dict)  # images of forward-only passes

    def add(self, where: str, images: int, gradient: bool) -> None:
        counts = self.gradient if gradient else self.forward
        counts[where] = counts.get(where, 0) + images

    def seconds(self, where: str, per_gradient: float, per_forward: float) -> float:
        return self.gradient.get(where, 0) * per_gradient + self.forward.get(where, 0) * per_forward

    def places(self) -> set[str]:
        """Every cell key with counted work, and "" when there was work outside cells."""
        return set(self.gradient) | set(self.forward)

    def total(self, cells: set[str] | None = None) -> tuple[int, int]:
        keep = lambda where: cells is None or where in cells  # noqa: E731
        return (sum(v for k, v in self.gradient.items() if keep(k)), sum(v for k, v in self.forward.items() if keep(k)))


@contextlib.contextmanager
def around_cells(before_cell) -> Iterator[None]:
    """Calls before_cell(sweep, subject, row_kind, key) before every cell of a sweep, and before_cell(..., None, "")
    after it (benchmark instrumentation: the sweep itself is unchanged)."""
    cell = runner.Sweep.cell

    def wrapped(self, subject, spec, row_kind, parts, compute, expected):
        before_cell(self, subject, row_kind, self._keys(subject, **parts)[0])
        try:
            return cell(self, subject, spec, row_kind, parts, compute, expected)
        finally:
            before_cell(self, subject, None, "")

    runner.Sweep.cell = wrapped
    try:
        yield
    finally:
        runner.Sweep.cell = cell


@contextlib.contextmanager
def counting(work: Work, image_shape: tuple[int, ...]) -> Iterator[None]:
    """Counts the images of every outermost module call on images (nested submodule calls are not passes)."""
    depth, where = [0], [""]

    def before(module, inputs):
        depth[0] += 1

    def after(module, inputs, output):
        depth[0] -= 1
        x = inputs[0] if inputs else None
        if depth[0] == 0 and isinstance(x, torch.Tensor) and tuple(x.shape[1:]) == image_shape:
            work.add(where[0], len(x), torch.is_grad_enabled())

    def enter(sweep, subject, kind, key):
        where[0] = key

    pre = torch.nn.modules.module.register_module_forward_pre_hook(before)
    post = torch.nn.modules.module.register_module_forward_hook(after)
    try:
        with around_cells(enter):
            yield
    finally:
        pre.remove()
        post.remove()


def bounded_suite(name: str, folder: Path, pgd_steps: int | None = None) -> Path:
    """A suite file with the bounded attacks of attacks/NAME.toml (the patch's cost is ART's image transforms,
    not gradient work, so it has no gradient-work limit), PGD steps optionally overridden."""
    data = tomllib.loads(find_suite(name).read_text(encoding="utf-8"))
    kept = [dict(e) for e in data["attack"] if ATTACKS.get(e["type"]).kind == "bounded"]
    for entry in kept:
        if pgd_steps is not None and entry["type"] == "pgd":
            entry["steps"] = pgd_steps
    path = folder / (f"{name}.toml" if len(kept) == len(data["attack"]) else f"{name}-bounded.toml")
    settings = {key: value for key, value in data.items() if key != "attack"}
    path.write_text(suite_toml(settings, kept), encoding="utf-8")
    return path


def everyday_suite(folder: Path) -> Path:
    """FGSM and PGD-40 (Linf) over the quick suite's 6 radii (0.25 ... 2 x the dataset's eps), no patch."""
    data = tomllib.loads(find_suite("quick").read_text(encoding="utf-8"))
    kept = [dict(e) for e in data["attack"] if e["type"] in ("fgsm", "pgd")]
    for entry in kept:
        if entry["type"] == "pgd":
            entry["steps"] = 40
    path = folder / "everyday.toml"
    path.write_text(suite_toml({"description": "FGSM + PGD-40, 6 eps (benchmark)"}, kept), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Job:
    models: tuple[Path, ...]
    suite: Path
    n: int
    device: torch.device
    batch_size: int
    seed: int = 0
    probe: int | None = None  # None: the sweep's default

    def sweep(self) -> pd.DataFrame:
        probe = {} if self.probe is None else {"probe": self.probe}
        with tempfile.TemporaryDirectory(prefix="bench-limit-") as out:
            return robustcnn.sweep(
                [str(p) for p in self.models], suite=str(self.suite), n=self.n, out=out, seed=self.seed,
                device=str(self.device), batch_size=self.batch_size, report=False, **probe,
            )  # fmt: skip

    def argv(self, out: str) -> list[str]:
        """The same sweep as a command (report off)."""
        probe = [] if self.probe is None else ["--probe", str(self.probe)]
        return [sys.executable, "-m", "robustcnn.sweep", *map(str, self.models), "--suite", str(self.suite), "--n",
                str(self.n), "--out", out, "--seed", str(self.seed), "--device", str(self.device), "--batch-size",
                str(self.batch_size), "--no-report", *probe]  # fmt: skip


def count_work(job: Job) -> Work:
    """The passes one run of the sweep makes (untimed: the hooks slow every module call)."""
    work = Work()
    with counting(work, tuple(load_run(job.models[0]).dataset.shape)):
        job.sweep()
    return work


def attack_cells(results: pd.DataFrame) -> pd.DataFrame:
    """One row per attack or probe cell (a cell with several rows, e.g. a minimal attack, once)."""
    return results[results.kind.isin(ATTACK_KINDS) & (results.cell != "")].drop_duplicates("cell")


def per_image(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int) -> tuple[float, float]:
    """Plain PyTorch on the sweep's own module (frozen weights, channels-last) and a full batch: (seconds per
    image of forward + backward wrt the input, seconds per image of a forward pass)."""
    device = x.device
    sync(device)
    started = time.perf_counter()
    for _ in range(passes):
        x_grad = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x_grad), y), x_grad)
    sync(device)
    middle = time.perf_counter()
    with torch.no_grad():
        for _ in range(passes):
            model(x).argmax(1)
    sync(device)
    images = passes * len(x)
    return (middle - started) / images, (time.perf_counter() - middle) / images


@dataclass
class Timings:
    """The per-image limit times measured right before each cell of one timed sweep, and what measuring took."""

    batch_size: int
    per_cell: dict[str, tuple[float, float]] = field(default_factory=dict)
    seconds: float = 0.0  # spent measuring: taken out of the sweep's wall time

    def before_cell(self, sweep, subject, kind, key) -> None:
        if not key:
            return
        started = time.perf_counter()
        x = subject.data.images(slice(0, self.batch_size)).to(subject.target.device)
        y = subject.data.y[: self.batch_size].to(subject.target.device)
        self.per_cell[key] = per_image(subject.model, x, y, TIMING_PASSES)
        self.seconds += time.perf_counter() - started

    def mean(self) -> tuple[float, float]:
        values = list(self.per_cell.values())
        return tuple(sum(v[i] for v in values) / len(values) for i in range(2))


@dataclass
class Rounds:
    attack: list[float] = field(default_factory=list)  # seconds of the attack cells
    wall: list[float] = field(default_factory=list)  # seconds of the whole call, the timings taken out
    attack_limit: list[float] = field(default_factory=list)
    wall_limit: list[float] = field(default_factory=list)

    def ratios(self, which: str) -> list[float]:
        return [t / limit for t, limit in zip(getattr(self, which), getattr(self, f"{which}_limit"), strict=True)]


def measure_job(job: Job, repeats: int) -> tuple[Rounds, Work]:
    """Counts the work once, then times the sweep `repeats` times, each cell's limit timed right before it."""
    work = count_work(job)
    rounds = Rounds()
    for _ in range(repeats):
        timings = Timings(job.batch_size)
        with around_cells(timings.before_cell):
            started = time.perf_counter()
            results = job.sweep()
            rounds.wall.append(time.perf_counter() - started - timings.seconds)
        cells = attack_cells(results)
        rounds.attack.append(float(cells.seconds.sum()))
        rounds.attack_limit.append(sum(work.seconds(key, *timings.per_cell[key]) for key in cells.cell))
        mean = timings.mean()
        rounds.wall_limit.append(sum(work.seconds(key, *timings.per_cell.get(key, mean)) for key in work.places()))
    return rounds, work


def measure(
    models: list[Path],
    n: int,
    aa_n: int | None,
    device: torch.device,
    batch: int,
    repeats: int,
    seed: int = 0,
    standard: bool = True,
) -> list[Row]:
    """The everyday sweep and its start-up as a command; the standard suite's bounded attacks on each model (unless
    `standard` is off), and (aa_n images) the autoattack-grade suite on the last one, in one round: its Square
    attack takes minutes."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-limit-suites-") as tmp:
        everyday = Job((models[-1],), everyday_suite(Path(tmp)), n, device, batch, seed, probe=0)
        targets = (LEAN_ATTACK_TARGET, LEAN_WALL_TARGET)
        rows += _rows(everyday, *measure_job(everyday, repeats), "FGSM + PGD-40, 6 eps, probes off", targets)
        rows.append(startup_row(everyday, repeats))
        suite = bounded_suite("standard", Path(tmp))
        for path in models if standard else []:
            job = Job((path,), suite, n, device, batch, seed)
            rows += _rows(
                job, *measure_job(job, repeats), "standard suite without the patch", (ATTACK_TARGET, WALL_TARGET)
            )
        if aa_n:
            grade = bounded_suite("autoattack-grade", Path(tmp))
            job = Job((models[-1],), grade, aa_n, device, batch, seed)
            rows += _rows(job, *measure_job(job, 1), "autoattack-grade suite", None)
    return rows


def _median(values: list[float]) -> float:
    return float(pd.Series(values).median())


def _ratios(values: list[float], what: str = "ratios") -> str:
    return f"{what} " + " / ".join(f"{r:.3g}" for r in values)


# `python -m robustcnn.sweep ...` with `import torch` timed first, inside the same process (its seconds to argv[1])
TIMED_TORCH = (
    "import runpy, sys, time; started = time.perf_counter(); import torch; "
    "open(sys.argv[1], 'w').write(repr(time.perf_counter() - started)); "
    "sys.argv = ['robustcnn.sweep', *sys.argv[2:]]; runpy.run_module('robustcnn.sweep', run_name='__main__')"
)
TORCH_ALONE = "import time; started = time.perf_counter(); import torch; print(repr(time.perf_counter() - started))"


def startup_row(job: Job, repeats: int) -> Row:
    """What a sweep command costs beyond its cells and `import torch`: interpreter and imports past torch, models and
    data, checks, planning, files. Each round runs `python -c "import torch"` and the command (report off) one after
    the other, each timing its own `import torch` inside: start-up = command wall - its cells' seconds (results.csv)
    - its own torch import - what the interpreter costs around `import torch` alone (that command's wall less its
    import). Timing the import in the same process matters: a separately timed `import torch` varied from 2.5 to
    4.8 s between processes on our shared host, more than the whole start-up (one round came out at -0.58 s).
    robustcnn's bytecode is compiled first, as pip leaves an installed package and as any run does where
    PYTHONDONTWRITEBYTECODE is unset (set on our sandbox, it would add each edited module's compile to every round)."""
    compileall.compile_dir(str(Path(robustcnn.__file__).parent), quiet=1)
    extra, commands, imports = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        alone = subprocess.run([sys.executable, "-c", TORCH_ALONE], check=True, capture_output=True, text=True)
        around = time.perf_counter() - started - float(alone.stdout)  # interpreter start and exit with torch loaded
        with tempfile.TemporaryDirectory(prefix="bench-startup-") as out:
            torch_seconds = Path(out) / "torch-import-seconds"
            argv = [sys.executable, "-c", TIMED_TORCH, str(torch_seconds), *job.argv(str(Path(out) / "sweep"))[3:]]
            started = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            commands.append(time.perf_counter() - started)
            cells = pd.read_csv(Path(out) / "sweep" / "results.csv").drop_duplicates("cell")
            imports.append(float(torch_seconds.read_text()))
        extra.append(commands[-1] - float(cells.seconds.sum()) - imports[-1] - around)
    where = f"{', '.join(p.name for p in job.models)}, n={job.n}, FGSM + PGD-40, 6 eps, probes off"
    return Row("sweep-limit", f"sweep command start-up beyond import torch and its cells ({where})", _median(extra),
               "s", target=f"<= {STARTUP_TARGET:g}", seconds=_median(commands), spread=_ratios(extra, "seconds"),
               baseline="import torch, timed inside the command", baseline_seconds=_median(imports), repeats=repeats,
               note="command wall - its cells' seconds (results.csv) - its own import torch - the interpreter's start "
               "and exit around import torch alone, per round")  # fmt: skip


def _rows(job: Job, rounds: Rounds, work: Work, suite: str, targets: tuple[float, float] | None) -> list[Row]:
    where = f"{suite}, {', '.join(p.name for p in job.models)}, n={job.n}, batch {job.batch_size}"
    cells = work.places() - {""}
    attack = work.total(cells)
    everything = work.total()
    counted = (
        f"counted: {attack[0]:,} input gradients + {attack[1]:,} forward-only images in the cells; "
        f"{everything[0] - attack[0]:,} + {everything[1] - attack[1]:,} outside them (checks, gallery)"
    )
    common = {"repeats": len(rounds.wall), "baseline": "gradient-work limit (plain PyTorch x counted passes)"}
    return [
        Row("sweep-limit", f"attack cells / their gradient-work limit ({where})", _median(rounds.ratios("attack")),
            "x limit", target=f"<= {targets[0]:g}" if targets else "", seconds=_median(rounds.attack),
            spread=_ratios(rounds.ratios("attack")), baseline_seconds=_median(rounds.attack_limit), note=counted,
            **common),
        Row("sweep-limit", f"whole sweep call / the limit of all its work ({where})", _median(rounds.ratios("wall")),
            "x limit", target=f"<= {targets[1]:g}" if targets else "", seconds=_median(rounds.wall),
            spread=_ratios(rounds.ratios("wall")), baseline_seconds=_median(rounds.wall_limit),
            note="in-process (imports excluded), report off", **common),
    ]  # fmt: skip
