"""Runs a sweep: every (model, attack, eps) cell, persisted as soon as it finishes, then the worst case.

Speed by design: eps balls nest, so an example already broken at a smaller eps (or misclassified
clean) is broken at every larger eps. In nested mode (the default) each eps attacks only the survivors
of the previous one and the accuracy is "no adversarial example found within eps" - the quantity a
robustness claim needs. `naive=True` attacks every correctly classified example at every eps instead.
A cascade suite also skips what earlier attacks of the norm broke (AutoAttack's order of work).

The cells run in chains (chains.py), here, in Ray tasks (on_ray.py) or spread over `--shard I/N`
processes; this file runs the chains it owns, then assembles rows, the worst case and the files from
every cell on disk, so results.csv is the same wherever the cells were computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from robustcnn.console import progress, say
from robustcnn.data import file_names
from robustcnn.errors import UsageError, last_line
from robustcnn.fileio import atomic_path, command_line, git_sha, library_versions, machine, write_json, write_text
from robustcnn.results import (
    EPS_TOLERANCE,
    MANIFEST_FILE,
    RESULTS_FILE,
    HeadlineEps,
    Manifest,
    ModelEntry,
    RowKind,
    Status,
    chance_level,
    examples_file,
    gallery_file,
    results_csv,
    wilson_interval,
)
from robustcnn.sweep import cells
from robustcnn.sweep.chains import Chain, ChainRunner, Done, seed_all
from robustcnn.sweep.config import TRACK_OPTIONS, SweepConfig
from robustcnn.sweep.store import CellStore
from robustcnn.sweep.subjects import Subject
from robustcnn.sweep.suite import AttackSpec, Suite

NUMBER_VERSIONS = ("robustcnn", "torch", "adversarial-robustness-toolbox", "numpy")  # can change a cell's numbers
WHERE_OPTIONS = ("ray", "cpus_per_task", "gpus_per_task", "shard")  # where cells run, never what they hold


def number_versions() -> dict[str, str]:
    return {k: v for k, v in library_versions().items() if k in NUMBER_VERSIONS}


class Sweep(ChainRunner):
    def __init__(
        self,
        config: SweepConfig,
        suite: Suite,
        subjects: list[Subject],
        out: Path,
        grids: dict[str, dict[str, tuple[float, ...]]],  # subject id -> attack name -> sorted eps (or scales)
    ):
        super().__init__(config, suite, grids, CellStore(out), number_versions(), on_computed=self._computed)
        self.subjects, self.out = subjects, Path(out)
        self.plan = self.chains(subjects)
        self.shard = config.shard_part  # (index, count) or None
        self.complete = False  # every cell of every model finished (a shard may finish before the others)
        self.started = self.written_at = time.perf_counter()
        self.write_seconds = 0.0  # what the last progressive rewrite of results.csv took
        self.headline = {s.id: headline_eps(self.suite, s.info, self.grids[s.id]) for s in self.subjects}
        self.manifest = self._manifest()
        self.gallery_found: dict[tuple[str, str], dict[int, np.ndarray]] = {}  # (model, attack) -> example -> x_adv

    # --- the whole run -------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        mine = [chain for chain in self.plan if self._owns(chain)]
        total = len(self.subjects) + sum(self.cell_count(chain) for chain in mine)
        self.bar = progress(total=total, desc="cells", unit="cell", leave=True)
        try:
            for subject in self.subjects:  # every shard and task needs each model's clean cell
                self._record_model_checks(subject)
                _hint_if_chance(subject, self.start(subject))
            if self.config.ray:
                from robustcnn.sweep.on_ray import run_on_ray

                run_on_ray(self, mine)
            else:
                for chain in mine:
                    self.run_chain(chain)
        except KeyboardInterrupt:
            self.results()  # every finished cell, also those since the last progressive write
            self._write_manifest(
                "interrupted", "interrupted: re-run the same command to resume; finished cells are kept"
            )
            raise
        except Exception as error:  # the manifest says so, rather than "running" for ever
            with contextlib.suppress(UsageError):  # e.g. a full disk: the first error is the one to see
                self._write_manifest("failed", f"{last_line(error)}; finished cells are kept: fix it and re-run")
            raise
        finally:
            self.bar.close()
            self.bar = None
        return self._assemble()

    def _owns(self, chain: Chain) -> bool:
        """A shard's deterministic share: every count-th chain of the plan, so models and attacks mix."""
        return self.shard is None or chain.index % self.shard[1] == self.shard[0]

    def _assemble(self) -> list[dict[str, Any]]:
        """Rows, worst case, gallery and manifest from every finished cell; shards read the others' cells too,
        one shard at a time, so whichever finishes last writes the complete results."""
        with self.store.lock():
            if self.shard is not None:
                found = [self.finished(chain) for chain in self.plan]  # all of them: each reads what is there
                self.complete = all(found)
            else:
                self.complete = True
            for subject in self.subjects:
                if self._complete(subject):
                    self._finish(subject)
            results = self.results()
            if self.complete:
                self._write_manifest("finished", "")
            else:
                missing = sum(self._cell_count(s) for s in self.subjects) - sum(len(d) for d in self.done.values())
                self._write_manifest(
                    "partial",
                    f"shard {self.config.shard} finished its cells; {missing} cell(s) of other shards are not done "
                    "yet: the shard that finishes last writes the complete results (or re-run any shard)",
                )
        return results

    def _finish(self, subject: Subject) -> None:
        """What a model gets once all its cells are done: the gallery and what each kind leaves (the patch images)."""
        examples = self.inputs[subject.id][0]
        for done in self.done[subject.id]:
            if done.spec is not None:
                done.spec.kind.after(self.out, subject, done.spec, done.cell)
        if self.config.gallery:
            self._gallery(subject, examples)

    def _cell_count(self, subject: Subject) -> int:
        return 1 + sum(self.cell_count(chain) for chain in self.plan if chain.subject is subject)

    def _computed(self, subject: Subject, done: Done) -> None:
        self._progress()

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

    # --- rows, worst case, results.csv ---------------------------------------------------------
    def _row(
        self, subject: Subject, spec: AttackSpec | None, row_kind: RowKind, flags: np.ndarray, key: str, **values
    ) -> dict:
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
            "kind": row_kind.value,
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
        rows = [self._row(subject, done.spec, done.row_kind, flags, done.key, **v) for v, flags in values]
        if done.spec and (notes := done.spec.kind.row_notes(done.cell)):
            params = json.dumps({**json.loads(rows[0]["params"]), **notes}, sort_keys=True, separators=(",", ":"))
            for row in rows:
                row["params"] = params
        return rows

    def _worst_case(self, subject: Subject, correct: np.ndarray) -> list[dict]:
        """Per norm and eps: robust only if no attack broke the example at any eps up to this one (balls nest).
        One pass over the rows in eps order, so a model with thousands of cells costs linear time."""
        evidence = [(done.spec.name, *row) for done in self.done[subject.id] for row in done.evidence()]
        rows, plan_order = [], list(dict.fromkeys(name for name, _, _, _ in evidence))
        for norm in dict.fromkeys(norm for _, norm, _, _ in evidence):
            mine = sorted(((eps, name, flags) for name, n, eps, flags in evidence if n == norm), key=lambda r: r[0])
            flags, names, taken = correct.copy(), set(), 0
            for eps in sorted({eps for eps, _, _ in mine}):
                while taken < len(mine) and mine[taken][0] <= eps + EPS_TOLERANCE:
                    _, name, row_flags = mine[taken]
                    flags &= row_flags
                    names.add(name)
                    taken += 1
                row = self._row(subject, None, RowKind.WORST_CASE, flags, "", eps=eps)
                attacks = [name for name in plan_order if name in names]
                row.update(attack=worst_case_name(norm), norm=norm, params=json.dumps({"attacks": attacks}))
                rows.append(row)
        return rows

    def _probe_clean(self, subject: Subject, correct: np.ndarray) -> list[dict]:
        """The clean row of the probe's examples, which the probe rows are compared with."""
        if not any(done.row_kind is RowKind.PROBE for done in self.done[subject.id]):
            return []
        size = min(self.config.probe, len(correct))
        return [self._row(subject, None, RowKind.PROBE, correct[:size], "", eps=0.0)]

    def _complete(self, subject: Subject) -> bool:
        return len(self.done.get(subject.id, [])) == self._cell_count(subject)

    def results(self) -> list[dict[str, Any]]:
        """All finished rows (`COLUMNS`) in plan order, plus the worst case of models whose attacks are all done;
        written to results.csv. Plain rows: the sweep command never imports pandas (`robustcnn.sweep()` makes the
        DataFrame)."""
        rows = []
        for subject in self.subjects:
            done = self.done.get(subject.id, [])
            for entry in done:
                rows += self._rows(subject, entry)
            if self._complete(subject):
                correct = done[0].cell.flags[0]
                rows += self._probe_clean(subject, correct) + self._worst_case(subject, correct)
        write_text(self.out / RESULTS_FILE, results_csv(rows))  # formula-like text cells quoted for spreadsheets
        return rows

    # --- gallery, model checks, manifest -------------------------------------------------------
    def _record_model_checks(self, subject: Subject) -> None:
        checks = subject.checks  # run as the model was loaded (subjects.py): what they found adapts the attacks
        self.manifest.replace_entry(dataclasses.replace(self.manifest.entry(subject.id), model_checks=tuple(checks)))
        for check in checks:
            if check.status is not Status.PASS:
                say(f"{subject.id}: model check {check.name}: {check.status.value}: {check.message}")

    def gallery_keep(self, subject: Subject, spec: AttackSpec, eps: float) -> cells.Keep | None:
        """The gallery's images (the first --gallery clean-correct ones) as a gallery attack's cells up to its
        headline eps attack them: each one's x_adv of the largest such eps it was attacked at (nested mode: where it
        broke, or the headline eps). So the gallery attacks again only what no cell here attacked (a cascade's
        earlier attack broke it, cells read back from disk)."""
        headline = self.headline[subject.id].attack_eps.get(spec.name)
        if not self.config.gallery or not spec.kind.in_gallery(spec) or headline is None:
            return None
        if eps > headline + EPS_TOLERANCE:
            return None
        wanted = self._gallery_index(subject)
        found = self.gallery_found.setdefault((subject.id, spec.name), {})

        def keep(part: np.ndarray, x_adv: np.ndarray) -> None:
            for position in np.flatnonzero(np.isin(part, wanted)):
                found[int(part[position])] = np.array(x_adv[position], dtype=np.float32)

        return keep

    def _gallery_index(self, subject: Subject) -> np.ndarray:
        return np.flatnonzero(self.inputs[subject.id][1])[: self.config.gallery]

    def _gallery(self, subject: Subject, examples: cells.Examples) -> None:
        """A few adversarial examples of the strongest white-box eps attack, at its headline eps."""
        choice = self._strongest_attack(subject)
        if choice is None:
            return
        spec, eps = choice
        index = self._gallery_index(subject)
        if not len(index):
            return
        x, y = examples.x(index), examples.y[index]  # (k, C, H, W) float32, k = --gallery at most
        found = self.gallery_found.get((subject.id, spec.name), {})
        x_adv = np.stack([found.get(int(i), x[position]) for position, i in enumerate(index)])
        again = np.array([int(i) not in found for i in index])
        if again.any():
            seed_all(self.config.seed)
            attack = spec.attack_class(spec.name, spec.norm, spec.params, subject.target)
            starts = cells.Starts(cells.start_seed(), index[again])
            x_adv[again] = attack.generate(x[again], y[again], eps, starts=starts)
        arrays = {
            "x": x,
            "x_adv": x_adv.astype(np.float32),
            "y": y.astype(np.int64),
            "pred": cells.predict(subject.target, x).astype(np.int64),
            "pred_adv": cells.predict(subject.target, x_adv).astype(np.int64),
            "attack": np.array(spec.name),
            "eps": np.array(float(eps)),
        }
        path = self.out / gallery_file(subject.id)
        path.parent.mkdir(exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    def _strongest_attack(self, subject: Subject) -> tuple[AttackSpec, float] | None:
        best = None
        for done in self.done[subject.id]:
            spec = done.spec
            if done.row_kind is not RowKind.ATTACK or not spec.kind.in_gallery(spec):
                continue
            eps = self.headline[subject.id].attack_eps[spec.name]
            if abs(done.cell.values[0]["eps"] - eps) > EPS_TOLERANCE:
                continue
            accuracy = done.cell.flags[0].mean()
            if best is None or accuracy < best[0]:
                best = (accuracy, spec, eps)
        return None if best is None else best[1:]

    def _manifest(self) -> Manifest:
        return Manifest(
            status="running",
            command=command_line(),
            config=dict(self.config.__dict__),
            suite=self.suite.to_dict(),
            seed=self.config.seed,
            mode="naive" if self.config.naive else "nested",
            device=f"{self.config.device} in Ray tasks" if self.config.ray else str(self.subjects[0].target.device),
            batch_size=self._batch_size(),
            shard=self.config.shard,
            versions=library_versions(),
            git_sha=git_sha(),
            machine=machine(),
            started=_now(),
            repeat=repeat_command(self.config, self.subjects),
            models=[self._describe(s) for s in self.subjects],
        )

    def _batch_size(self) -> int | str:
        if self.config.ray and self.config.batch_size in (None, "auto"):
            return "auto in each task, on its device (128 on a CPU)"
        return self.subjects[0].target.batch_size

    def _describe(self, subject: Subject) -> ModelEntry:
        """The model's entry: what its card says (subjects.py), and what this sweep adds."""
        return dataclasses.replace(
            subject.card.entry,
            preprocessing_label=subject.card.preprocessing,
            dataset=subject.info.name,
            threat_model=subject.info.threat_model.to_dict(),
            class_names=tuple(subject.info.class_names),
            shape=tuple(subject.info.shape),
            n=len(subject.subset),
            subset=subject.subset_hash,
            grids={name: list(grid) for name, grid in self.grids[subject.id].items()},
            headline=self.headline[subject.id],
            batch_size=subject.target.batch_size,
            batch_choice=subject.target.batch_choice,
            draws=subject.target.draws,
            adaptations=tuple(change for spec in self.suite.attacks for change in spec.adapted(subject.target)[1]),
        )

    def _record_batches(self) -> None:
        """Each model's batch size as it ended, and every halving on running out of GPU memory (in this process;
        a Ray task halves its own and says so on the worker's stderr)."""
        for subject in self.subjects:
            if subject.id in self.inputs:
                batches = self.inputs[subject.id][0].batches
                entry = self.manifest.entry(subject.id)
                changes = {"batch_size": batches.size, "batch_backoffs": tuple(batches.backoffs)}
                self.manifest.replace_entry(dataclasses.replace(entry, **changes))

    def _write_manifest(self, status: str, message: str) -> None:
        self.manifest.status, self.manifest.message = status, message
        self.manifest.finished, self.manifest.seconds = _now(), round(time.perf_counter() - self.started, 2)
        self._record_batches()
        write_json(self.out / MANIFEST_FILE, self.manifest.to_json())

    def mode_label(self) -> str:
        mode = "naive: every example at every eps" if self.config.naive else "nested: survivors only"
        return mode + (", cascade over attacks" if self.suite.cascade and not self.config.naive else "")

    def write_manifest_start(self) -> None:
        write_json(self.out / MANIFEST_FILE, self.manifest.to_json())
        for subject in self.subjects:
            write_examples(self.out, subject)


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
        if not spec.kind.has_eps:  # the patch: scales
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
    specs = [subject.card.entry.repeat_spec for subject in subjects]
    if None in specs:
        return None
    words = ["python", "-m", "robustcnn.sweep", *specs]
    for option in dataclasses.fields(SweepConfig):
        value = getattr(config, option.name)
        flag = "--" + option.name.replace("_", "-")
        if option.name in ("weights", *WHERE_OPTIONS, *TRACK_OPTIONS) or value == option.default:
            continue  # each run directory's spec says its weights; where cells ran or are logged does not change them
        if option.name == "report":
            words.append("--no-report")
        elif option.name == "fail_under":
            words += [w for gate in value for w in ("--fail-under", gate)]
        else:
            words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def write_examples(out: Path, subject: Subject) -> None:
    """The model's test images in the order of its cells' flags: what per-example results refer to. An image
    folder's also name their files, so the export can be joined with the user's own records of them."""
    arrays = {"index": subject.subset.astype(np.int64), "label": subject.data.y.numpy().astype(np.int64)}
    names = file_names(subject.info.name, "test", folder=subject.info.folder, subset=subject.subset)  # no decoding
    if names is not None:
        arrays["name"] = np.array(names, dtype=np.str_).reshape(-1)  # (n,) unicode, never an object array
    path = out / examples_file(subject.id)
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


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
    """Resolves every attack's grid for every model's dataset up front, and checks each attack against the model
    and its data (a patch's target class, DLR's three classes, a layer a bound cannot handle), so that a bad
    value is one line before anything is written, not a crash after an hour of attacks."""
    grids = {}
    for subject in subjects:
        try:
            grids[subject.id] = {spec.name: spec.grid(subject.info) for spec in suite.attacks}
            for spec in suite.attacks:
                spec.check_data(subject.info)
                attack = spec.attack_class(spec.name, spec.norm, spec.params, subject.target)  # its own checks
                attack.check_model()
        except UsageError as error:
            raise UsageError(f"{suite.path}: model {subject.id!r}: {error}") from None
    return grids
