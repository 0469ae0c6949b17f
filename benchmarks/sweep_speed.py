"""Sweep speed: `robustcnn.sweep` against the loops a user writes by hand with ART and with torchattacks.

The job is the same for every variant: FGSM and PGD in Linf over the 7 radii of the `fgsm` and
`pgd-linf` entries of attacks/standard.toml, on the same n test images of each model (the sweep's
seeded subset), from run directories to per-example correctness. Each variant loads its models and
data inside the timed region, and the sweep writes into a fresh temporary folder, so nothing is cached.

- robustcnn.sweep: nested eps reuse (only the survivors of the previous eps are attacked), batches of
  `default_batch_size` (128 on a CPU), frozen weights in channels-last layout, ART underneath.
- ART loop: one ART attack object per eps on all images, ART's default batch size (32), true labels;
  the model as `robustcnn.load_model` returns it (weights trainable, as users have them).
- torchattacks loop: the same loop with torchattacks.FGSM / torchattacks.PGD (same steps, step size
  and random start), in batches of 32 like the ART loop, and again in batches of the sweep's size
  (the fastest way we found to write that loop; shown for context).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomllib
import torch
from torch import nn

import robustcnn
from benchmarks.table import Row
from benchmarks.timing import Timed, interleaved
from robustcnn.errors import UsageError
from robustcnn.runs import load_run
from robustcnn.sweep.subjects import test_subset, unique_ids
from robustcnn.sweep.suite import AttackSpec, find_suite, load_suite

ATTACKS = ("fgsm", "pgd-linf")  # the entries of attacks/standard.toml this benchmark keeps
ART_DEFAULT_BATCH = 32  # what ART's attacks use when the user does not say
AGREEMENT_PP = 1.0  # accuracies of the three variants must agree within this many percentage points

Flags = dict[tuple[str, str], np.ndarray]  # (model id, attack or "clean") -> (n_eps, n) bool: still correct


@dataclass(frozen=True)
class Job:
    models: tuple[Path, ...]  # run directories
    suite: Path  # the restricted suite file
    n: int  # test images per model
    device: torch.device
    batch_size: int  # the sweep's batch size, also used by the faster torchattacks loop
    seed: int = 0  # the sweep's seed: picks the same test subset

    def reseeded(self, offset: int) -> Job:
        return dataclasses.replace(self, seed=self.seed + offset)

    @property
    def ids(self) -> list[str]:
        return unique_ids(list(self.models))

    def specs(self) -> list[AttackSpec]:
        return list(load_suite(self.suite).attacks)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def suite_toml(settings: dict, entries: list[dict]) -> str:
    """A suite file's text: its top-level settings, then one [[attack]] table per entry."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    for entry in entries:
        lines += ["", "[[attack]]"] + [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


def write_suite(folder: Path, pgd_steps: int | None = None) -> Path:
    """attacks/standard.toml cut down to its fgsm and pgd-linf entries (PGD steps optionally overridden)."""
    data = tomllib.loads(find_suite("standard").read_text(encoding="utf-8"))
    entries = [dict(e) for e in data["attack"] if e["name"] in ATTACKS]
    if [e["name"] for e in entries] != list(ATTACKS):
        raise UsageError(f"attacks/standard.toml no longer has the entries {', '.join(ATTACKS)}")
    for entry in entries:
        if pgd_steps is not None and entry["type"] == "pgd":
            entry["steps"] = pgd_steps
    path = folder / "bench-standard.toml"
    settings = {"description": "fgsm and pgd-linf of the standard suite (benchmark)"}
    path.write_text(suite_toml(settings, entries), encoding="utf-8")
    return path


def sweep_images(path: Path, job: Job) -> tuple[np.ndarray, np.ndarray]:
    """The sweep's own subset: the same n seeded test images of the model's dataset."""
    dataset = load_run(path).meta["config"]["dataset"]
    test = robustcnn.load_dataset(dataset, "test")
    part = test.subset(test_subset(len(test), job.n, job.seed, dataset))
    return part.images().numpy(), part.y.numpy()  # (n, C, H, W) float32 in [0, 1], (n,)


def _pgd_settings(spec: AttackSpec) -> tuple[int, float]:
    """(steps, step as a fraction of eps) of a pgd entry; the hand-written loops only do one random start."""
    p = spec.params
    if p.restarts != 1 or not p.random_start:
        raise UsageError(f"attack {spec.name!r}: the benchmark's loops do exactly one random start")
    return p.steps, p.step_size or 2.5 / p.steps


def _seed(seed: int) -> None:
    np.random.seed(seed)  # ART draws its random starts here
    torch.manual_seed(seed)  # torchattacks draws its random starts here


# --- the three variants ---------------------------------------------------------------------------------
def run_sweep(job: Job, naive: bool = False) -> dict[tuple[str, str, float], float]:
    """robustcnn.sweep into a fresh folder; returns accuracy per (model, attack, eps), eps 0 for clean."""
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as out:
        results = robustcnn.sweep(
            [str(p) for p in job.models],
            suite=str(job.suite),
            n=job.n,
            out=out,
            seed=job.seed,
            device=str(job.device),
            naive=naive,
            report=False,  # rendering is timed on its own (report section)
            probe=0,  # the probe feeds the report's checks; the loops compute none (its cost: see the notes)
        )
    rows = results[results.kind.isin(["clean", "attack"])]
    return {(r.model, r.attack, round(float(r.eps), 9)): float(r.accuracy) for r in rows.itertuples()}


def art_loop(job: Job) -> Flags:
    """What a user writes with ART: per eps, one attack object over all images, ART's defaults otherwise."""
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    _seed(job.seed)
    flags: Flags = {}
    for path, name in zip(job.models, job.ids, strict=True):
        model = robustcnn.load_model(path, device=job.device)
        x, y = sweep_images(path, job)
        classifier = PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=x.shape[1:],
            nb_classes=load_run(path).dataset.num_classes,
            clip_values=(0.0, 1.0),
            device_type="gpu" if job.device.type == "cuda" else "cpu",
        )
        flags[(name, "clean")] = (classifier.predict(x).argmax(1) == y)[None]
        for spec in job.specs():
            grid = spec.grid(load_run(path).dataset)
            correct = []
            for eps in grid:
                if spec.type == "fgsm":
                    attack = FastGradientMethod(classifier, norm=spec.norm.art, eps=eps)
                else:
                    steps, step = _pgd_settings(spec)
                    attack = ProjectedGradientDescent(
                        classifier, norm=spec.norm.art, eps=eps, eps_step=step * eps, max_iter=steps, num_random_init=1,
                        verbose=False,  # no progress bars in the benchmark's log; the work is the same
                    )  # fmt: skip
                x_adv = attack.generate(x, y=y)  # true labels
                correct.append(classifier.predict(x_adv).argmax(1) == y)
            flags[(name, spec.name)] = np.stack(correct)
    return flags


def torchattacks_loop(job: Job, batch_size: int = ART_DEFAULT_BATCH) -> Flags:
    """The same loop with torchattacks, over the images in batches of `batch_size`."""
    import torchattacks

    _seed(job.seed)
    flags: Flags = {}
    for path, name in zip(job.models, job.ids, strict=True):
        model = robustcnn.load_model(path, device=job.device)
        x, y = (torch.from_numpy(a).to(job.device) for a in sweep_images(path, job))
        starts = range(0, len(x), batch_size)
        flags[(name, "clean")] = _correct(model, x, y, batch_size)[None]
        for spec in job.specs():
            correct = []
            for eps in spec.grid(load_run(path).dataset):
                if spec.type == "fgsm":
                    attack = torchattacks.FGSM(model, eps=eps)
                else:
                    steps, step = _pgd_settings(spec)
                    attack = torchattacks.PGD(model, eps=eps, alpha=step * eps, steps=steps, random_start=True)
                x_adv = torch.cat([attack(x[i : i + batch_size], y[i : i + batch_size]) for i in starts])
                correct.append(_correct(model, x_adv, y, batch_size))
            flags[(name, spec.name)] = np.stack(correct)
    return flags


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.no_grad():
        predicted = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return (predicted == y).cpu().numpy()


# --- accuracy side by side --------------------------------------------------------------------------------
def accuracy_records(job: Job, ours: dict, loops: dict[str, Flags]) -> list[dict]:
    """One round's accuracies per model, attack and eps: ours (nested) next to each loop, per eps and nested.

    The sweep reports "no adversarial example found at any eps <= this eps". A loop's per-eps figure
    is "none found at this eps". AND-ing a loop's per-example flags over the eps up to this one (and
    with clean correctness) gives the sweep's quantity, so that "nested" column is the like-for-like one.
    """
    records = []
    for path, model in zip(job.models, job.ids, strict=True):
        info = load_run(path).dataset
        record = {"model": model, "attack": "clean", "eps": 0.0, "robustcnn": ours[(model, "clean", 0.0)]}
        for name, f in loops.items():
            record[f"{name} per-eps"] = record[f"{name} nested"] = float(f[(model, "clean")].mean())
        records.append(record)
        for spec in job.specs():
            nested = {name: np.logical_and.accumulate(f[(model, spec.name)] & f[(model, "clean")], axis=0)
                      for name, f in loops.items()}  # fmt: skip
            for i, eps in enumerate(spec.grid(info)):
                record = {"model": model, "attack": spec.name, "eps": eps}
                record["robustcnn"] = ours[(model, spec.name, round(eps, 9))]
                for name, f in loops.items():
                    record[f"{name} per-eps"] = float(f[(model, spec.name)][i].mean())
                    record[f"{name} nested"] = float(nested[name][i].mean())
                records.append(record)
    return records


def accuracy_table(rounds: list[list[dict]], loops: list[str]) -> list[dict]:
    """Accuracies averaged over the rounds (each round has its own seed, so its own random starts).

    `robustcnn spread pp` is how far our own accuracy moved between seeds: the noise floor of a gap.
    """
    table = []
    for cells in zip(*rounds, strict=True):
        record = dict(cells[0])
        for column in [c for c in record if c not in ("model", "attack", "eps")]:
            record[column] = float(np.mean([cell[column] for cell in cells]))
        ours = [cell["robustcnn"] for cell in cells]
        record["robustcnn spread pp"] = round(100 * (max(ours) - min(ours)), 2)
        record["max gap pp"] = round(100 * max(abs(record["robustcnn"] - record[f"{n} nested"]) for n in loops), 2)
        table.append(record)
    return table


def gradient_steps(job: Job, accuracy: list[dict]) -> tuple[float, float]:
    """(ours, a loop's) gradient computations per round: nesting attacks only the survivors of the last eps."""
    steps = {spec.name: spec.params.steps if spec.type == "pgd" else 1 for spec in job.specs()}
    ours = loops = 0.0
    survivors = {}
    for record in accuracy:  # in eps order per (model, attack), clean first per model
        model, attack = record["model"], record["attack"]
        if attack == "clean":
            clean = record["robustcnn"]
            continue
        previous = survivors.get((model, attack), clean)
        ours += previous * job.n * steps[attack]
        loops += job.n * steps[attack]
        survivors[(model, attack)] = record["robustcnn"]
    return ours, loops


def measure(
    job: Job, repeats: int, with_naive_sweep: bool = False, warmup: bool = True
) -> tuple[list[Row], list[dict]]:
    """Round r runs every variant with seed job.seed + r: same work, fresh random starts each round."""
    variants: dict[str, Callable[[int], object]] = {
        "sweep": lambda r: run_sweep(job.reseeded(r)),
        "art": lambda r: art_loop(job.reseeded(r)),
        "torchattacks": lambda r: torchattacks_loop(job.reseeded(r)),
        "torchattacks-fast": lambda r: torchattacks_loop(job.reseeded(r), job.batch_size),
    }
    if with_naive_sweep:
        variants["sweep-naive"] = lambda r: run_sweep(job.reseeded(r), naive=True)
    if warmup:
        warm = dataclasses.replace(job, n=min(job.n, 16))
        for variant in (run_sweep, art_loop, torchattacks_loop):
            variant(warm)  # first-call costs (imports, kernel selection) stay out of the figures
    timed = interleaved(variants, repeats, job.device)
    loops = {"art": timed["art"], "ta": timed["torchattacks"]}  # the accuracy table compares the batch-32 loops
    rounds = [
        accuracy_records(job.reseeded(r), timed["sweep"].values[r], {k: t.values[r] for k, t in loops.items()})
        for r in range(repeats)
    ]
    accuracy = accuracy_table(rounds, list(loops))
    return _rows(job, timed, accuracy), accuracy


def _rows(job: Job, timed: dict[str, Timed], accuracy: list[dict]) -> list[Row]:
    radii = len(job.specs()[0].grid(load_run(job.models[0]).dataset))
    what = f"{len(job.models)} models x {' + '.join(ATTACKS)} x {radii} eps, n={job.n}"
    ours = timed["sweep"]
    common = {"seconds": ours.median, "repeats": len(ours.seconds), "unit": "x faster", "spread": ours.spread}
    rows = [
        Row("sweep", f"robustcnn.sweep vs naive ART loop ({what})", timed["art"].median / ours.median,
            target=">= 3", baseline=f"ART loop, batch {ART_DEFAULT_BATCH}", baseline_seconds=timed["art"].median,
            baseline_spread=timed["art"].spread, note=f"sweep: nested, batch {job.batch_size}, channels-last",
            **common),
        Row("sweep", f"robustcnn.sweep vs the same loop with torchattacks ({what})",
            timed["torchattacks"].median / ours.median, target=">= 1.5",
            baseline=f"torchattacks loop, batch {ART_DEFAULT_BATCH}", baseline_seconds=timed["torchattacks"].median,
            baseline_spread=timed["torchattacks"].spread, **common),
        Row("sweep", f"robustcnn.sweep vs the torchattacks loop at the sweep's batch size ({what})",
            timed["torchattacks-fast"].median / ours.median, baseline=f"torchattacks loop, batch {job.batch_size}",
            baseline_seconds=timed["torchattacks-fast"].median, baseline_spread=timed["torchattacks-fast"].spread,
            note="context: the fastest hand-written loop we tried", **common),
    ]  # fmt: skip
    if "sweep-naive" in timed:
        naive = timed["sweep-naive"]
        rows.append(
            Row("sweep", "robustcnn.sweep naive=True (every example at every eps) vs naive ART loop",
                timed["art"].median / naive.median, "x faster", seconds=naive.median, spread=naive.spread,
                baseline=f"ART loop, batch {ART_DEFAULT_BATCH}", baseline_seconds=timed["art"].median,
                repeats=len(naive.seconds), note="context: the gain without nesting (batching, frozen weights)")
        )  # fmt: skip
    ours_steps, loop_steps = gradient_steps(job, accuracy)
    per_step = timed["torchattacks-fast"].median / ours.median * ours_steps / loop_steps
    rows.append(
        Row("sweep", "work: gradient computations of a loop / of robustcnn.sweep (nesting skips broken examples)",
            loop_steps / ours_steps, "x less work",
            note=f"{ours_steps:,.0f} vs {loop_steps:,.0f}; per gradient, the sweep runs at {per_step:.2f}x the "
            "fastest torchattacks loop's speed")
    )  # fmt: skip
    worst = max(record["max gap pp"] for record in accuracy)
    noise = max(record["robustcnn spread pp"] for record in accuracy)
    rows.append(
        Row("sweep", "accuracy agreement: max |robustcnn - loop (nested)| over models, attacks, eps", worst, "pp",
            target=f"<= {AGREEMENT_PP:g}",
            note=f"mean of {len(ours.seconds)} seed(s); robustcnn's own seed-to-seed spread is up to {noise:g} pp; "
            "accuracy table below")
    )  # fmt: skip
    return rows
