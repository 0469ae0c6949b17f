"""Runs a sweep: every (model, attack, eps) cell, persisted as soon as it finishes, then the worst case.

Speed by design: eps balls nest, so an example already broken at a smaller eps (or misclassified
clean) is broken at every larger eps. In nested mode (the default) each eps attacks only the survivors
of the previous one and the accuracy is "no adversarial example found within eps" - the quantity a
robustness claim needs. `naive=True` attacks every correctly classified example at every eps instead.
A cascade suite also skips what earlier attacks of the norm broke (AutoAttack's order of work).

This file decides which examples each cell attacks, caches cells and writes rows; the attacks themselves
run in the pure functions of cells.py, chosen by the attack's kind (`RUNS`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustcnn.console import progress, say
from robustcnn.errors import UsageError
from robustcnn.fileio import command_line, git_sha, library_versions, machine, write_json, write_text
from robustcnn.results import (
    COLUMNS,
    EPS_TOLERANCE,
    MANIFEST_FILE,
    RESULTS_FILE,
    HeadlineEps,
    chance_level,
    file_stem,
    wilson_interval,
)
from robustcnn.sweep import cells
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.model_checks import model_checks
from robustcnn.sweep.store import Cell, CellStore, cell_key
from robustcnn.sweep.subjects import Subject
from robustcnn.sweep.suite import AttackSpec, Suite

NUMBER_VERSIONS = ("robustcnn", "torch", "adversarial-robustness-toolbox", "numpy")  # can change a cell's numbers


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Done:
    """A finished cell of this sweep and what its rows are about (the cell itself holds only numbers)."""

    spec: AttackSpec | None  # None for the clean cell
    kind: str  # the rows' kind: clean | attack | probe
    key: str
    cell: Cell

    def evidence(self) -> list[tuple[str, float, np.ndarray]]:
        """(norm, eps, flags) of each row that counts towards nesting and the worst case."""
        if self.kind != "attack" or self.spec.kind == "patch":
            return []
        return [
            (self.spec.norm.value, float(v["eps"]), f) for v, f in zip(self.cell.values, self.cell.flags, strict=True)
        ]


@dataclass
class Sweep:
    config: SweepConfig
    suite: Suite
    subjects: list[Subject]
    out: Path
    grids: dict[str, dict[str, tuple[float, ...]]]  # subject id -> attack name -> sorted eps (or scales)
    store: CellStore = field(init=False)
    done: dict[str, list[Done]] = field(default_factory=dict)  # subject id -> finished cells, in plan order

    def __post_init__(self):
        self.store = CellStore(self.out)
        self.started = self.written_at = time.perf_counter()
        self.write_seconds = 0.0  # what the last progressive rewrite of results.csv took
        self.versions = {k: v for k, v in library_versions().items() if k in NUMBER_VERSIONS}
        self.headline = {s.id: headline_eps(self.suite, s.info, self.grids[s.id]) for s in self.subjects}
        self.manifest = self._manifest()

    # --- the whole run -------------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        total = sum(self._cell_count(s) for s in self.subjects)
        self.bar = progress(total=total, desc="cells", unit="cell", leave=True)
        try:
            for subject in self.subjects:
                self._run_subject(subject)
        except KeyboardInterrupt:
            self.results()  # every finished cell, also those since the last progressive write
            self._write_manifest(
                "interrupted", "interrupted: re-run the same command to resume; finished cells are kept"
            )
            raise
        finally:
            self.bar.close()
        results = self.results()
        self._write_manifest("finished", "")
        return results

    def _cell_count(self, subject: Subject) -> int:
        """Cells of one model: clean, one per eps of each bounded attack, one per other attack, one per probe."""
        count = 1
        for spec in self.suite.attacks:
            count += len(self.grids[subject.id][spec.name]) if spec.kind in PER_EPS_KINDS else 1
            count += int(self._probes(spec))
        return count

    def _run_subject(self, subject: Subject) -> None:
        self._record_model_checks(subject)
        x, y = subject.data.images().numpy(), subject.data.y.numpy()
        correct = self._clean(subject, x, y)
        _hint_if_chance(subject, correct)
        for spec in self.suite.attacks:
            attack = spec.attack_class(spec.name, spec.norm, spec.params, subject.target)
            RUNS[spec.kind](self, subject, spec, attack, x, y, correct)
            if self._probes(spec):
                self._probe(subject, spec, attack, x, y)
        if self.config.gallery:
            self._gallery(subject, x, y, correct)

    # --- cells ---------------------------------------------------------------------------------
    def _keys(self, subject: Subject, **parts: Any) -> tuple[str, int]:
        """The cell's cache key and its random seed.

        The key hashes everything the result depends on, the library versions that can change a number
        included. The seed leaves the model out: the same attack gets the same random starts on every
        model, so identical weights loaded two ways give identical rows, and models meet common random numbers.
        """
        common = {"dataset": subject.info.name, "subset": subject.subset_hash, "seed": self.config.seed, **parts}
        key = cell_key({"model": subject.card.key, "versions": self.versions, **common})
        return key, self.config.seed * 1_000_003 + int(cell_key(common)[:8], 16)

    def _cell(self, subject: Subject, spec: AttackSpec | None, kind: str, parts: dict, compute) -> Cell:
        """The cell from disk if a matching one is there, else computed and saved; recorded as done either way."""
        key, seed = self._keys(subject, **parts)
        cell = self.store.load(key)
        if cell is None:
            self.bar.set_postfix_str(f"{subject.id} {spec.name if spec else kind}", refresh=True)
            seed_all(seed)  # per cell: order and resume do not matter
            started = time.perf_counter()
            cell = compute()
            seconds = round(time.perf_counter() - started, 3)
            for values in cell.values:
                values.update(n=cell.flags.shape[1], seconds=seconds)
            self.store.save(key, cell)
            self.done.setdefault(subject.id, []).append(Done(spec, kind, key, cell))
            self._progress()
        else:
            self.done.setdefault(subject.id, []).append(Done(spec, kind, key, cell))
        self.bar.update()
        return cell

    def _progress(self) -> None:
        """Rewrites results.csv while the sweep runs, for whoever watches it, at a cost bounded by a fixed share
        of the sweep's time (a rewrite after every cell costs time quadratic in the number of cells)."""
        since = time.perf_counter() - self.written_at
        if since < max(PROGRESS_SECONDS, PROGRESS_COST_FACTOR * self.write_seconds):
            return
        started = time.perf_counter()
        self.results()
        self.written_at = time.perf_counter()
        self.write_seconds = self.written_at - started

    def _clean(self, subject: Subject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        compute = lambda: Cell([{"eps": 0.0}], cells.clean(subject.target, x, y)[None], {})  # noqa: E731
        return self._cell(subject, None, "clean", {"cell": "clean"}, compute).flags[0]

    def _bounded(self, subject: Subject, spec: AttackSpec, attack, x, y, correct) -> None:
        grid = self.grids[subject.id][spec.name]
        for i, eps in enumerate(grid):
            if self.config.naive:
                todo, mode = correct, {"mode": "naive"}
            else:
                todo = correct & self._unbroken(subject, spec, eps)
                mode = {"mode": "nested", "prior": list(grid[:i]), **self._cascade_identity(subject, spec)}

            def compute(eps=eps, todo=todo) -> Cell:
                return Cell([{"eps": eps}], cells.bounded(attack, subject.target, x, y, todo, eps)[None], {})

            self._cell(subject, spec, "attack", {"attack": spec.describe(), "eps": eps, **mode}, compute)

    def _certified(self, subject: Subject, spec: AttackSpec, bound, x, y, correct) -> None:
        """One cell per eps; each eps bounds only what the previous one certified (a proof at eps holds below it)."""
        todo = correct
        grid = self.grids[subject.id][spec.name]
        for i, eps in enumerate(grid):

            def compute(eps=eps, todo=todo) -> Cell:
                return Cell([{"eps": eps}], cells.certified(bound, subject.target, x, y, todo, eps)[None], {})

            parts = {"attack": spec.describe(), "eps": eps, "prior": list(grid[:i])}
            todo = self._cell(subject, spec, "certified", parts, compute).flags[0]

    def _unbroken(self, subject: Subject, spec: AttackSpec, eps: float) -> np.ndarray:
        """Examples no finished row of this attack at a smaller eps broke (in a cascade: nor any earlier
        attack of its norm at an eps up to this one). Eps balls nest, so those broken stay broken."""
        earlier = self._earlier(spec) if self.suite.cascade else set()
        flags = np.ones(len(subject.subset), dtype=bool)
        for done in self.done.get(subject.id, []):
            if done.spec is spec or (done.spec is not None and done.spec.name in earlier):
                for _, row_eps, row_flags in done.evidence():
                    if row_eps < eps - EPS_TOLERANCE or (done.spec is not spec and row_eps <= eps + EPS_TOLERANCE):
                        flags &= row_flags
        return flags

    def _earlier(self, spec: AttackSpec) -> set[str]:
        """The attacks before `spec` in the suite with its norm: what a cascade runs `spec` after."""
        index = self.suite.attacks.index(spec)
        return {s.name for s in self.suite.attacks[:index] if s.norm is spec.norm and s.kind in ATTACK_KINDS}

    def _cascade_identity(self, subject: Subject, spec: AttackSpec) -> dict[str, Any]:
        if not self.suite.cascade:
            return {}
        before = [s for s in self.suite.attacks if s.name in self._earlier(spec)]
        return {"after": [[s.describe(), list(self.grids[subject.id][s.name])] for s in before]}

    def _minimal(self, subject: Subject, spec: AttackSpec, attack, x, y, correct) -> None:
        grid = self.grids[subject.id][spec.name]

        def compute() -> Cell:
            flags, distance = cells.minimal(attack, subject.target, x, y, correct, grid)
            return Cell([{"eps": eps} for eps in grid], flags, {"distance": distance})

        self._cell(subject, spec, "attack", {"attack": spec.describe(), "grid": list(grid)}, compute)

    def _smoothed(self, subject: Subject, spec: AttackSpec, certificate, x, y, correct) -> None:
        grid = self.grids[subject.id][spec.name]

        def compute() -> Cell:
            flags, radius = cells.smoothed(certificate, x, y, grid)
            return Cell([{"eps": eps} for eps in grid], flags, {"radius": radius})

        self._cell(subject, spec, "smoothed", {"attack": spec.describe(), "grid": list(grid)}, compute)

    def _patch(self, subject: Subject, spec: AttackSpec, attack, x, y, correct) -> None:
        scales = self.grids[subject.id][spec.name]

        def compute() -> Cell:
            x_train, y_train = self._patch_training_images(subject, spec)
            goal = spec.params.target
            flags, success, patch = cells.patch(attack, subject.target, x, y, x_train, y_train, scales, goal)
            values = [{"scale": s, "target_success": t} for s, t in zip(scales, success, strict=True)]
            return Cell(values, flags, {"patch": patch})

        cell = self._cell(subject, spec, "attack", {"attack": spec.describe(), "scales": list(scales)}, compute)
        self._save_patch_png(subject, spec, cell.extra["patch"])

    def _probes(self, spec: AttackSpec) -> bool:
        """White-box bounded attacks get a probe; a black-box one costs thousands of queries per example."""
        return bool(self.config.probe) and spec.kind == "bounded" and spec.attack_class.box == "white"

    def _probe(self, subject: Subject, spec: AttackSpec, attack, x, y) -> None:
        grid = self.grids[subject.id][spec.name]
        size = min(self.config.probe, len(x))

        def compute() -> Cell:
            flags = cells.probe(attack, subject.target, x[:size], y[:size], grid)
            return Cell([{"eps": eps} for eps in grid], flags, {})

        parts = {"attack": spec.describe(), "grid": list(grid), "probe": size}
        self._cell(subject, spec, "probe", parts, compute)

    def _patch_training_images(self, subject: Subject, spec: AttackSpec) -> tuple[np.ndarray, np.ndarray]:
        """The patch is optimised on training images so the test images it is judged on stay unseen."""
        from robustcnn.data import load_dataset

        if subject.info.has_train:
            pool = load_dataset(subject.info.name, "train", self.config.data_dir, self.config.download)
        else:  # test data only (npz without x_train): the test images this sweep does not judge
            pool = load_dataset(subject.info.name, "test", self.config.data_dir, self.config.download)
            pool = pool.subset(np.setdiff1d(np.arange(len(pool)), subject.subset))
            if not len(pool):
                raise UsageError(
                    f"{subject.info.name} has no training images and --n takes every test image: the patch needs "
                    "images it is not judged on; lower --n, or add x_train / y_train to the file"
                )
        count = min(spec.params.train_images, len(pool))
        index = torch.randperm(len(pool), generator=torch.Generator().manual_seed(self.config.seed))[:count]
        part = pool.subset(index)
        return part.images().numpy(), part.y.numpy()

    def _save_patch_png(self, subject: Subject, spec: AttackSpec, patch: np.ndarray) -> None:
        from PIL import Image

        from robustcnn.fileio import atomic_path

        folder = self.out / "patches"
        folder.mkdir(exist_ok=True)
        pixels = (np.clip(patch, 0, 1) * 255).round().astype(np.uint8)  # (C, H, W)
        image = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
        with atomic_path(folder / f"{file_stem(subject.id)}__{file_stem(spec.name)}.png") as tmp:
            image.save(tmp, format="PNG")

    # --- rows, worst case, results.csv ---------------------------------------------------------
    def _row(self, subject: Subject, spec: AttackSpec | None, kind: str, flags: np.ndarray, key: str, **values) -> dict:
        """One results.csv row: the numbers of a cell, described by the current sweep (model id, suite, seed)."""
        n, n_correct = len(flags), int(flags.sum())
        low, high = wilson_interval(n_correct, n)
        return {
            "model": subject.id,
            "checkpoint_sha256": subject.sha256,
            "dataset": subject.info.name,
            "arch": subject.card.arch,
            "train_method": subject.card.method,
            "preprocessing": subject.card.preprocessing,
            "kind": kind,
            "attack": spec.name if spec else "clean",
            "attack_type": spec.type if spec else "",
            "box": spec.attack_class.box if spec else "none",
            "params": spec.params_json() if spec else "{}",
            "norm": spec.norm.value if spec and spec.norm else "",
            "eps": _number(values.get("eps")),
            "scale": _number(values.get("scale")),
            "n": n,
            "n_correct": n_correct,
            "accuracy": n_correct / n if n else math.nan,
            "ci_low": low,
            "ci_high": high,
            "target_success": _number(values.get("target_success")),
            "seconds": _number(values.get("seconds")) if key else 0.0,
            "suite": self.suite.name,
            "seed": self.config.seed,
            "cell": key,
        }

    def _rows(self, subject: Subject, done: Done) -> list[dict]:
        values = zip(done.cell.values, done.cell.flags, strict=True)
        return [self._row(subject, done.spec, done.kind, flags, done.key, **v) for v, flags in values]

    def _worst_case(self, subject: Subject, correct: np.ndarray) -> list[dict]:
        """Per norm and eps: robust only if no attack broke the example at any eps up to this one (balls nest)."""
        evidence = [(done.spec.name, *row) for done in self.done[subject.id] for row in done.evidence()]
        rows = []
        for norm in dict.fromkeys(norm for _, norm, _, _ in evidence):
            mine = [(name, eps, flags) for name, n, eps, flags in evidence if n == norm]
            for eps in sorted({eps for _, eps, _ in mine}):
                within = [(name, flags) for name, e, flags in mine if e <= eps + EPS_TOLERANCE]
                flags = np.logical_and.reduce([correct, *(f for _, f in within)])
                row = self._row(subject, None, "worst-case", flags, "", eps=eps)
                names = list(dict.fromkeys(name for name, _ in within))
                row.update(attack=worst_case_name(norm), norm=norm, params=json.dumps({"attacks": names}))
                rows.append(row)
        return rows

    def _probe_clean(self, subject: Subject, correct: np.ndarray) -> list[dict]:
        """The clean row of the probe's examples, which the probe rows are compared with."""
        if not any(done.kind == "probe" for done in self.done[subject.id]):
            return []
        size = min(self.config.probe, len(correct))
        return [self._row(subject, None, "probe", correct[:size], "", eps=0.0)]

    def _complete(self, subject: Subject) -> bool:
        return len(self.done.get(subject.id, [])) == self._cell_count(subject)

    def results(self) -> pd.DataFrame:
        """All finished rows in plan order, plus the worst case of models whose attacks are all done."""
        rows = []
        for subject in self.subjects:
            done = self.done.get(subject.id, [])
            for entry in done:
                rows += self._rows(subject, entry)
            if self._complete(subject):
                correct = done[0].cell.flags[0]
                rows += self._probe_clean(subject, correct) + self._worst_case(subject, correct)
        frame = pd.DataFrame(rows, columns=COLUMNS)
        write_text(self.out / RESULTS_FILE, frame.to_csv(index=False))
        return frame

    # --- gallery, model checks, manifest -------------------------------------------------------
    def _record_model_checks(self, subject: Subject) -> None:
        x = subject.data.images(slice(0, 64)).to(subject.target.device)
        y = subject.data.y[:64].to(subject.target.device)
        checks = model_checks(subject.model, x, y) + subject.checks
        self._model_entry(subject)["model_checks"] = checks
        for check in checks:
            if check["status"] != "pass":
                say(f"{subject.id}: model check {check['name']}: {check['status']}: {check['message']}")

    def _gallery(self, subject: Subject, x: np.ndarray, y: np.ndarray, correct: np.ndarray) -> None:
        """A few adversarial examples of the strongest white-box eps attack, at its headline eps."""
        choice = self._strongest_attack(subject)
        if choice is None:
            return
        spec, eps = choice
        index = np.flatnonzero(correct)[: self.config.gallery]
        if not len(index):
            return
        seed_all(self.config.seed)
        attack = spec.attack_class(spec.name, spec.norm, spec.params, subject.target)
        x_adv = attack.generate(x[index], y[index], eps)
        arrays = {
            "x": x[index],
            "x_adv": x_adv.astype(np.float32),
            "y": y[index].astype(np.int64),
            "pred": cells.predict(subject.target, x[index]).astype(np.int64),
            "pred_adv": cells.predict(subject.target, x_adv).astype(np.int64),
            "attack": np.array(spec.name),
            "eps": np.array(float(eps)),
        }
        from robustcnn.fileio import atomic_path

        folder = self.out / "gallery"
        folder.mkdir(exist_ok=True)
        with atomic_path(folder / f"{file_stem(subject.id)}.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    def _strongest_attack(self, subject: Subject) -> tuple[AttackSpec, float] | None:
        best = None
        for done in self.done[subject.id]:
            spec = done.spec
            if done.kind != "attack" or spec.kind != "bounded" or spec.attack_class.box != "white":
                continue
            eps = self.headline[subject.id].attack_eps[spec.name]
            if abs(done.cell.values[0]["eps"] - eps) > EPS_TOLERANCE:
                continue
            accuracy = done.cell.flags[0].mean()
            if best is None or accuracy < best[0]:
                best = (accuracy, spec, eps)
        return None if best is None else best[1:]

    def _model_entry(self, subject: Subject) -> dict[str, Any]:
        return next(m for m in self.manifest["models"] if m["id"] == subject.id)

    def _manifest(self) -> dict[str, Any]:
        return {
            "format": "robustcnn-sweep/1",
            "status": "running",
            "message": "",
            "command": command_line(),
            "config": {k: v for k, v in self.config.__dict__.items()},
            "suite": self.suite.to_dict(),
            "seed": self.config.seed,
            "mode": "naive" if self.config.naive else "nested",
            "device": str(self.subjects[0].target.device),
            "batch_size": self.subjects[0].target.batch_size,
            "versions": library_versions(),
            "git_sha": git_sha(),
            "machine": machine(),
            "started": _now(),
            "repeat": repeat_command(self.config, self.subjects),
            "models": [self._describe(s) for s in self.subjects],
        }

    def _describe(self, subject: Subject) -> dict[str, Any]:
        return {
            "id": subject.id,
            **subject.card.entry,
            "preprocessing_label": subject.card.preprocessing,
            "dataset": subject.info.name,
            "threat_model": subject.info.threat_model.to_dict(),
            "class_names": list(subject.info.class_names),
            "shape": list(subject.info.shape),
            "n": len(subject.subset),
            "grids": {name: list(grid) for name, grid in self.grids[subject.id].items()},
            **self.headline[subject.id].to_dict(),
        }

    def _write_manifest(self, status: str, message: str) -> None:
        self.manifest.update(
            status=status, message=message, finished=_now(), seconds=round(time.perf_counter() - self.started, 2)
        )
        write_json(self.out / MANIFEST_FILE, self.manifest)

    def mode_label(self) -> str:
        mode = "naive: every example at every eps" if self.config.naive else "nested: survivors only"
        return mode + (", cascade over attacks" if self.suite.cascade and not self.config.naive else "")

    def write_manifest_start(self) -> None:
        write_json(self.out / MANIFEST_FILE, self.manifest)


RUNS = {  # attack kind -> its cells
    "bounded": Sweep._bounded,
    "minimal": Sweep._minimal,
    "patch": Sweep._patch,
    "certified": Sweep._certified,
    "smoothed": Sweep._smoothed,
}
PER_EPS_KINDS = ("bounded", "certified")  # one cell per eps (the others: one cell for the whole grid)
ATTACK_KINDS = ("bounded", "minimal")  # attacks whose rows bound robust accuracy from above at an eps
PROGRESS_SECONDS = 5.0  # results.csv is rewritten at most this often while a sweep runs ...
PROGRESS_COST_FACTOR = 50  # ... and at most once per this many times what the last rewrite took (<= 2% of the time)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def headline_eps(suite: Suite, info, grids: dict[str, tuple[float, ...]]) -> HeadlineEps:
    """Decided once, here: per norm the reference eps (the suite's, else the dataset's for that norm), and per
    attack and worst case the grid eps closest to it (a tie goes to the larger, harder eps)."""
    reference, at = {}, {}
    union: dict[str, set[float]] = {}
    for spec in suite.attacks:
        if spec.kind == "patch":
            continue
        norm = spec.norm.value
        reference[norm] = suite.reference(spec.norm, info)
        at[spec.name] = _closest(grids[spec.name], reference[norm])
        union.setdefault(norm, set()).update(grids[spec.name])
    for norm, grid in union.items():
        at[worst_case_name(norm)] = _closest(sorted(grid), reference[norm])
    return HeadlineEps(reference, at)


def _closest(grid, target: float) -> float:
    return min(grid, key=lambda eps: (abs(eps - target), -eps))


def repeat_command(config: SweepConfig, subjects: list[Subject]) -> str | None:
    """The command line that runs this sweep again (None when a model was a Python object, not a spec)."""
    specs = [subject.card.entry.get("repeat_spec") for subject in subjects]
    if None in specs:
        return None
    words = ["python", "-m", "robustcnn.sweep", *specs]
    for option in dataclasses.fields(SweepConfig):
        value = getattr(config, option.name)
        flag = "--" + option.name.replace("_", "-")
        if option.name == "weights" or value == option.default:
            continue  # each run directory's spec says its weights
        if option.name == "report":
            words.append("--no-report")
        elif option.name == "fail_under":
            words += [w for gate in value for w in ("--fail-under", gate)]
        else:
            words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def _hint_if_chance(subject: Subject, correct: np.ndarray) -> None:
    chance, floor = chance_level(subject.info.num_classes)
    if len(correct) and correct.mean() < floor:
        say(
            f"{subject.id}: clean accuracy {correct.mean():.1%} is at chance level ({chance:.1%}): is the "
            f"normalisation right? (preprocessing: {subject.card.preprocessing}; see --normalize, --input-range)"
        )


def worst_case_name(norm: str) -> str:
    """'worst-case' for Linf, 'worst-case-l2' for L2: one worst case per threat model, never mixed."""
    return "worst-case" if norm == "inf" else f"worst-case-l{norm}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def plan_grids(subjects: list[Subject], suite: Suite) -> dict[str, dict[str, tuple[float, ...]]]:
    """Resolves every attack's grid for every model's dataset up front, so a bad eps fails before any work."""
    grids = {}
    for subject in subjects:
        try:
            grids[subject.id] = {spec.name: spec.grid(subject.info) for spec in suite.attacks}
            for spec in suite.attacks:
                if spec.kind == "certified":  # an unsupported layer: one line now, not after an hour of attacks
                    spec.attack_class(spec.name, spec.norm, spec.params, subject.target).check_model()
        except UsageError as error:
            raise UsageError(f"{suite.path}: model {subject.id!r}: {error}") from None
    return grids
