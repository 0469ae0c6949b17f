"""Runs a sweep: every (model, attack, eps) cell, persisted as soon as it finishes, then the worst case.

Speed by design: eps balls nest, so an example already broken at a smaller eps (or misclassified
clean) is broken at every larger eps. In nested mode (the default) each eps attacks only the survivors
of the previous one and the accuracy is "no adversarial example found within eps" - the quantity a
robustness claim needs. `naive=True` attacks every correctly classified example at every eps instead.
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
from robustcnn.results import COLUMNS, MANIFEST_FILE, RESULTS_FILE, chance_level, file_stem, wilson_interval
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.model_checks import model_checks
from robustcnn.sweep.store import Cell, CellStore, cell_key
from robustcnn.sweep.subjects import Subject
from robustcnn.sweep.suite import AttackSpec, Suite


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def predict(subject: Subject, x: np.ndarray) -> np.ndarray:
    """Predicted classes for x (n, C, H, W) float32 in [0, 1], in batches on the subject's device."""
    model, target = subject.model, subject.target
    out = []
    with torch.no_grad():
        for start in range(0, len(x), target.batch_size):
            batch = torch.from_numpy(x[start : start + target.batch_size]).to(target.device)
            out.append(model(batch).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def in_batches(generate, x: np.ndarray, y: np.ndarray, batch_size: int, desc: str) -> np.ndarray:
    """Runs an ART attack batch by batch so progress shows and Ctrl-C lands between batches."""
    x_adv = np.empty_like(x)
    for start in progress(range(0, len(x), batch_size), desc=desc, unit="batch"):
        stop = start + batch_size
        x_adv[start:stop] = generate(x[start:stop], y[start:stop])
    return x_adv


@dataclass
class Sweep:
    config: SweepConfig
    suite: Suite
    subjects: list[Subject]
    out: Path
    grids: dict[str, dict[str, tuple[float, ...]]]  # subject id -> attack name -> sorted eps (or scales)
    store: CellStore = field(init=False)
    cells: dict[tuple[str, str], list[Cell]] = field(default_factory=dict)  # (subject, attack) -> cells in eps order

    def __post_init__(self):
        self.store = CellStore(self.out)
        self.started = time.perf_counter()
        self.manifest = self._manifest()

    # --- the whole run -------------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        total = sum(1 + sum(self._cell_count(s, a) for a in self.suite.attacks) for s in self.subjects)
        self.bar = progress(total=total, desc="cells", unit="cell", leave=True)
        try:
            for subject in self.subjects:
                self._run_subject(subject)
        except KeyboardInterrupt:
            self._write_manifest(
                "interrupted", "interrupted: re-run the same command to resume; finished cells are kept"
            )
            raise
        finally:
            self.bar.close()
        results = self.results()
        self._write_manifest("finished", "")
        return results

    def _cell_count(self, subject: Subject, spec: AttackSpec) -> int:
        return 1 if spec.is_patch or spec.is_minimal else len(self.grids[subject.id][spec.name])

    def _run_subject(self, subject: Subject) -> None:
        self._record_model_checks(subject)
        x, y = subject.data.images().numpy(), subject.data.y.numpy()
        correct = self._clean(subject, x, y)
        _hint_if_chance(subject, correct)
        for spec in self.suite.attacks:
            attack = spec.attack_class(spec.name, spec.norm, spec.params, subject.target)
            if spec.is_patch:
                self._patch(subject, spec, attack, x, y)
            elif spec.is_minimal:
                self._minimal(subject, spec, attack, x, y, correct)
            else:
                self._bounded(subject, spec, attack, x, y, correct)
        if self.config.gallery:
            self._gallery(subject, x, y, correct)

    # --- cells ---------------------------------------------------------------------------------
    def _keys(self, subject: Subject, **parts: Any) -> tuple[str, int]:
        """The cell's cache key and its random seed.

        The key hashes everything the result depends on. The seed leaves the model out: the same attack
        gets the same random starts on every model, so identical weights loaded two ways (a run directory
        and a builder) give identical rows, and models are compared on common random numbers.
        """
        common = {"dataset": subject.info.name, "subset": subject.subset_hash, "seed": self.config.seed, **parts}
        key = cell_key({"model": subject.card.key, **common})
        return key, self.config.seed * 1_000_003 + int(cell_key(common)[:8], 16)

    def _cached_or_compute(self, slot: tuple[str, str], key: str, seed: int, compute) -> Cell:
        """The cell from disk if a matching one is there, else computed, saved and added to results.csv."""
        cell = self.store.load(key)
        if cell is None:
            self.bar.set_postfix_str(" ".join(slot), refresh=True)
            seed_all(seed)  # per cell: order and resume do not matter
            started = time.perf_counter()
            cell = compute()
            seconds = round(time.perf_counter() - started, 3)
            for row in cell.rows:
                row["seconds"] = seconds
            self.store.save(key, cell)
            self.cells.setdefault(slot, []).append(cell)
            self.results()  # results.csv grows with every computed cell (cached ones are written at the end)
        else:
            self.cells.setdefault(slot, []).append(cell)
        self.bar.update()
        return cell

    def _clean(self, subject: Subject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        key, seed = self._keys(subject, cell="clean")

        def compute() -> Cell:
            correct = predict(subject, x) == y
            return Cell([self._row(subject, None, "clean", correct, key, eps=0.0)], correct[None], {})

        return self._cached_or_compute((subject.id, "clean"), key, seed, compute).flags[0]

    def _bounded(self, subject, spec: AttackSpec, attack, x, y, correct) -> None:
        grid = self.grids[subject.id][spec.name]
        survivors = correct
        for i, eps in enumerate(grid):
            mode = {"mode": "naive"} if self.config.naive else {"mode": "nested", "prior": list(grid[:i])}
            key, seed = self._keys(subject, attack=spec.describe(), eps=eps, **mode)
            todo = correct if self.config.naive else survivors

            def compute(eps=eps, todo=todo, key=key) -> Cell:
                robust = np.zeros_like(correct)
                index = np.flatnonzero(todo)
                if len(index):
                    generate = lambda xb, yb: attack.generate(xb, yb, eps)  # noqa: E731
                    x_adv = in_batches(
                        generate, x[index], y[index], subject.target.batch_size, f"{spec.name} eps={eps:.4g}"
                    )
                    robust[index] = predict(subject, x_adv) == y[index]
                return Cell([self._row(subject, spec, "attack", robust, key, eps=eps)], robust[None], {})

            survivors = self._cached_or_compute((subject.id, spec.name), key, seed, compute).flags[0]

    def _minimal(self, subject, spec: AttackSpec, attack, x, y, correct) -> None:
        grid = self.grids[subject.id][spec.name]
        key, seed = self._keys(subject, attack=spec.describe(), grid=list(grid))

        def compute() -> Cell:
            index = np.flatnonzero(correct)
            distance = np.full(len(x), np.inf)  # inf: no adversarial example found
            if len(index):
                x_adv = in_batches(attack.generate, x[index], y[index], subject.target.batch_size, spec.name)
                fooled = predict(subject, x_adv) != y[index]
                ord_ = np.inf if spec.norm.value == "inf" else 2
                norms = np.linalg.norm((x_adv - x[index]).reshape(len(index), -1), ord=ord_, axis=1)
                distance[index] = np.where(fooled, norms, np.inf)
            flags = np.stack([correct & (distance > eps * (1 + 1e-6)) for eps in grid])
            rows = [self._row(subject, spec, "attack", f, key, eps=eps) for f, eps in zip(flags, grid, strict=True)]
            return Cell(rows, flags, {"distance": distance})

        self._cached_or_compute((subject.id, spec.name), key, seed, compute)

    def _patch(self, subject, spec: AttackSpec, attack, x, y) -> None:
        scales = self.grids[subject.id][spec.name]
        key, seed = self._keys(subject, attack=spec.describe(), scales=list(scales))

        def compute() -> Cell:
            x_train, y_train = self._patch_training_images(subject, spec)
            patch = attack.train_patch(x_train, y_train, scales)
            rows, flags = [], []
            target = spec.params.target
            for scale in scales:
                predicted = predict(subject, attack.apply(x, scale, patch, scales))
                correct = predicted == y
                others = y != target
                success = float((predicted[others] == target).mean()) if others.any() else math.nan
                rows.append(self._row(subject, spec, "attack", correct, key, scale=scale, target_success=success))
                flags.append(correct)
            return Cell(rows, np.stack(flags), {"patch": patch.astype(np.float32)})

        cell = self._cached_or_compute((subject.id, spec.name), key, seed, compute)
        self._save_patch_png(subject, spec, cell.extra["patch"])

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
        n, n_correct = len(flags), int(flags.sum())
        low, high = wilson_interval(n_correct, n)
        row = {
            "model": subject.id,
            "checkpoint_sha256": subject.sha256,
            "dataset": subject.info.name,
            "arch": subject.card.arch,
            "train_method": subject.card.method,
            "preprocessing": subject.card.preprocessing,
            "kind": kind,
            "attack": spec.name if spec else kind,
            "attack_type": spec.type if spec else "",
            "box": spec.attack_class.box if spec else "none",
            "params": spec.params_json() if spec else "{}",
            "norm": spec.norm.value if spec and spec.norm else "",
            "eps": values.get("eps", math.nan),
            "scale": values.get("scale", math.nan),
            "n": n,
            "n_correct": n_correct,
            "accuracy": n_correct / n if n else math.nan,
            "ci_low": low,
            "ci_high": high,
            "target_success": values.get("target_success", math.nan),
            "seconds": 0.0,
            "suite": self.suite.name,
            "seed": self.config.seed,
            "cell": key,
        }
        return row

    def _worst_case(self, subject: Subject) -> list[dict]:
        """Per (norm, eps): an example is robust only if every attack at that eps failed on it."""
        robust: dict[tuple[str, float], np.ndarray] = {}
        names: dict[tuple[str, float], list[str]] = {}
        for spec in self.suite.attacks:
            if spec.is_patch or (subject.id, spec.name) not in self.cells:
                continue
            for cell in self.cells[(subject.id, spec.name)]:
                for row, flags in zip(cell.rows, cell.flags, strict=True):
                    group = (row["norm"], round(float(row["eps"]), 9))
                    robust[group] = robust.get(group, flags) & flags
                    names.setdefault(group, []).append(spec.name)
        rows = []
        for (norm, eps), flags in sorted(robust.items()):
            n, n_correct = len(flags), int(flags.sum())
            low, high = wilson_interval(n_correct, n)
            row = self._row(subject, None, "worst-case", flags, "", eps=eps)
            row.update(
                attack=worst_case_name(norm),
                norm=norm,
                params=json.dumps({"attacks": names[(norm, eps)]}),
                ci_low=low,
                ci_high=high,
            )
            rows.append(row)
        return rows

    def _complete(self, subject: Subject) -> bool:
        expected = sum(self._cell_count(subject, spec) for spec in self.suite.attacks)
        return sum(len(self.cells.get((subject.id, spec.name), [])) for spec in self.suite.attacks) == expected

    def results(self) -> pd.DataFrame:
        """All finished rows in plan order, plus worst-case rows for models whose attacks are all done."""
        rows = []
        for subject in self.subjects:
            for name in ["clean", *(spec.name for spec in self.suite.attacks)]:
                for cell in self.cells.get((subject.id, name), []):
                    rows += cell.rows
            if self._complete(subject):
                rows += self._worst_case(subject)
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
        """A few adversarial examples of the strongest white-box eps attack, at the reference eps."""
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
            "pred": predict(subject, x[index]).astype(np.int64),
            "pred_adv": predict(subject, x_adv).astype(np.int64),
            "attack": np.array(spec.name),
            "eps": np.array(float(eps)),
        }
        from robustcnn.fileio import atomic_path

        folder = self.out / "gallery"
        folder.mkdir(exist_ok=True)
        with atomic_path(folder / f"{file_stem(subject.id)}.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    def reference_eps(self, subject: Subject, spec: AttackSpec) -> float:
        grid = self.grids[subject.id][spec.name]
        wanted = self.suite.reference_eps if self.suite.reference_eps and spec.norm.value == "inf" else None
        wanted = wanted or subject.info.reference_eps(spec.norm)
        return min(grid, key=lambda eps: abs(eps - wanted))

    def _strongest_attack(self, subject: Subject) -> tuple[AttackSpec, float] | None:
        best = None
        for spec in self.suite.attacks:
            if spec.is_patch or spec.is_minimal or spec.attack_class.box != "white":
                continue
            eps = self.reference_eps(subject, spec)
            cells = self.cells[(subject.id, spec.name)]
            accuracy = next(c.rows[0]["accuracy"] for c in cells if c.rows[0]["eps"] == eps)
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
        }

    def _write_manifest(self, status: str, message: str) -> None:
        self.manifest.update(
            status=status, message=message, finished=_now(), seconds=round(time.perf_counter() - self.started, 2)
        )
        write_json(self.out / MANIFEST_FILE, self.manifest)

    def mode_label(self) -> str:
        return "naive: every example at every eps" if self.config.naive else "nested: survivors only"

    def write_manifest_start(self) -> None:
        write_json(self.out / MANIFEST_FILE, self.manifest)


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
        except UsageError as error:
            raise UsageError(f"{suite.path}: model {subject.id!r}: {error}") from None
    return grids
