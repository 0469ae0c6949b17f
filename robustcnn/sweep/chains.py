"""The unit of sweep work: a chain of cells of one model, and `ChainRunner`, which runs chains cell by cell.

Eps balls nest, so each eps of an attack attacks only the survivors of the previous one: an attack's cells
form a chain that must run in order (in a cascade suite, every attack of a norm joins one chain). Chains of
one model share nothing but its clean cell, so they can run anywhere: here, in a shard (`--shard`), or in a
Ray task (on_ray.py). Wherever a chain runs, `ChainRunner` computes its cells the same way: the same keys,
the same seeds, the same survivors, so the numbers are the same.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustcnn.errors import UsageError
from robustcnn.results import EPS_TOLERANCE
from robustcnn.sweep import cells
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.store import Cell, Expected, cell_key
from robustcnn.sweep.subjects import Subject
from robustcnn.sweep.suite import AttackSpec, Suite

PER_EPS_KINDS = ("bounded", "certified")  # one cell per eps (the others: one cell for the whole grid)
ATTACK_KINDS = ("bounded", "minimal")  # attacks whose rows bound robust accuracy from above at an eps


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Done:
    """A finished cell of this sweep and what its rows are about (the cell itself holds only numbers)."""

    spec: AttackSpec | None  # None for the clean cell
    kind: str  # the rows' kind: clean | attack | probe | certified | smoothed
    key: str
    cell: Cell

    def evidence(self) -> list[tuple[str, float, np.ndarray]]:
        """(norm, eps, flags) of each row that counts towards nesting and the worst case."""
        if self.kind != "attack" or self.spec.kind == "patch":
            return []
        return [
            (self.spec.norm.value, float(v["eps"]), f) for v, f in zip(self.cell.values, self.cell.flags, strict=True)
        ]


@dataclass(frozen=True)
class Chain:
    """Attacks of one model whose cells run in order; `index` is its place in the sweep's plan (shards use it)."""

    subject: Subject
    specs: tuple[AttackSpec, ...]
    index: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)


class MissingCell(Exception):
    """A cell that is not on disk, met while only finished work is being read back (`ChainRunner.computing`)."""


class ChainRunner:
    """Computes (or finds) the cells of chains and records them in `done`.

    `store` is anything with load(key) and save(key, cell): the sweep's folder, or the cells a Ray task
    was handed. `on_computed(subject, done)` hears of every cell computed here (not of those found).
    """

    def __init__(
        self,
        config: SweepConfig,
        suite: Suite,
        grids: dict[str, dict[str, tuple[float, ...]]],
        store,
        versions: dict[str, str],
        on_computed: Callable[[Subject, Done], None] | None = None,
    ):
        self.config, self.suite, self.grids, self.store, self.versions = config, suite, grids, store, versions
        self.on_computed = on_computed
        self.position = {spec.name: i for i, spec in enumerate(suite.attacks)}  # plan order of the attacks
        self.done: dict[str, list[Done]] = {}  # subject id -> finished cells, in plan order
        self.inputs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # subject id -> x, y, clean flags
        self.patch_images: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # set by whoever has the data
        self.computing = True  # False: only read finished cells back, a missing one raises MissingCell
        self.bar = None

    # --- the plan ------------------------------------------------------------------------------
    def chains(self, subjects: list[Subject]) -> list[Chain]:
        """Every chain of the sweep, in plan order: per model, per attack (per norm in a cascade suite)."""
        chains = []
        for subject in subjects:
            groups: dict[str, list[AttackSpec]] = {}
            for spec in self.suite.attacks:
                joint = self.suite.cascade and not self.config.naive and spec.kind in ATTACK_KINDS
                groups.setdefault(f"norm {spec.norm.value}" if joint else spec.name, []).append(spec)
            chains += [Chain(subject, tuple(specs), len(chains) + i) for i, specs in enumerate(groups.values())]
        return chains

    def cell_count(self, chain: Chain) -> int:
        """Cells of a chain: one per eps of each per-eps attack, one per other attack, one per probe."""
        grids = self.grids[chain.subject.id]
        return sum((len(grids[s.name]) if s.kind in PER_EPS_KINDS else 1) + int(self._probes(s)) for s in chain.specs)

    # --- running -------------------------------------------------------------------------------
    def start(self, subject: Subject) -> np.ndarray:
        """The clean cell, which every chain of the model needs (which examples are correct to begin with)."""
        x, y = subject.data.images().numpy(), subject.data.y.numpy()
        compute = lambda: Cell([{"eps": 0.0}], cells.clean(subject.target, x, y)[None], {})  # noqa: E731
        expected = Expected(len(x), "eps", (0.0,))
        correct = self._cell(subject, None, "clean", {"cell": "clean"}, compute, expected).flags[0]
        self.inputs[subject.id] = (x, y, correct)
        return correct

    def run_chain(self, chain: Chain) -> None:
        subject = chain.subject
        x, y, correct = self.inputs[subject.id]
        for spec in chain.specs:
            attack = spec.attack_class(spec.name, spec.norm, spec.params, subject.target)
            RUNS[spec.kind](self, subject, spec, attack, x, y, correct)
            if self._probes(spec):
                self._probe(subject, spec, attack, x, y)

    def finished(self, chain: Chain) -> bool:
        """Whether every cell of the chain is on disk (read back into `done` as far as they go)."""
        self.computing = False
        try:
            self.run_chain(chain)
        except MissingCell:
            return False
        finally:
            self.computing = True
        return True

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

    def _cell(
        self, subject: Subject, spec: AttackSpec | None, kind: str, parts: dict, compute, expected: Expected
    ) -> Cell:
        """The cell from the store if a matching one is there (and holds what `expected` says), else computed and
        saved; recorded as done either way."""
        key, seed = self._keys(subject, **parts)
        cell = self.store.load(key, expected)
        if cell is not None:
            self._record(subject, Done(spec, kind, key, cell))
            return cell
        if not self.computing:
            raise MissingCell(key)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{subject.id} {spec.name if spec else kind}", refresh=True)
        seed_all(seed)  # per cell: order, resume and where it runs do not matter
        started = time.perf_counter()
        cell = compute()
        seconds = round(time.perf_counter() - started, 3)
        for values in cell.values:
            values.update(n=cell.flags.shape[1], seconds=seconds)
        self.accept(subject, Done(spec, kind, key, cell))
        return cell

    def accept(self, subject: Subject, done: Done) -> None:
        """A newly computed cell, here or in a Ray task: saved, recorded, and heard of by `on_computed`."""
        self.store.save(done.key, done.cell)
        self._record(subject, done)
        if self.on_computed is not None:
            self.on_computed(subject, done)

    def _record(self, subject: Subject, done: Done) -> None:
        """Adds a finished cell once, keeping plan order (chains may finish in any order). Two attacks of the suite
        with the same settings under two names share a cell (same key), and each still gets its rows."""
        finished = self.done.setdefault(subject.id, [])
        if any(d.key == done.key and d.spec == done.spec for d in finished):
            return
        finished.append(done)
        finished.sort(key=lambda d: (self.position[d.spec.name] if d.spec else -1, d.kind == "probe"))  # stable
        if self.bar is not None:
            self.bar.update()

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

            parts = {"attack": spec.describe(), "eps": eps, **mode}
            self._cell(subject, spec, "attack", parts, compute, Expected(len(x), "eps", (eps,)))

    def _certified(self, subject: Subject, spec: AttackSpec, bound, x, y, correct) -> None:
        """One cell per eps; each eps bounds only what the previous one certified (a proof at eps holds below it)."""
        todo = correct
        grid = self.grids[subject.id][spec.name]
        for i, eps in enumerate(grid):

            def compute(eps=eps, todo=todo) -> Cell:
                return Cell([{"eps": eps}], cells.certified(bound, subject.target, x, y, todo, eps)[None], {})

            parts = {"attack": spec.describe(), "eps": eps, "prior": list(grid[:i])}
            todo = self._cell(subject, spec, "certified", parts, compute, Expected(len(x), "eps", (eps,))).flags[0]

    def _unbroken(self, subject: Subject, spec: AttackSpec, eps: float) -> np.ndarray:
        """Examples no finished row of this attack at a smaller eps broke (in a cascade: nor any earlier
        attack of its norm at an eps up to this one). Eps balls nest, so those broken stay broken."""
        earlier = self._earlier(spec) if self.suite.cascade else set()
        flags = np.ones(len(subject.subset), dtype=bool)
        for done in self.done.get(subject.id, []):
            if done.spec is None or (done.spec.name != spec.name and done.spec.name not in earlier):
                continue
            mine = done.spec.name == spec.name
            for _, row_eps, row_flags in done.evidence():
                if row_eps < eps - EPS_TOLERANCE or (not mine and row_eps <= eps + EPS_TOLERANCE):
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

        expected = Expected(len(x), "eps", grid, {"distance": (len(x),)})
        self._cell(subject, spec, "attack", {"attack": spec.describe(), "grid": list(grid)}, compute, expected)

    def _smoothed(self, subject: Subject, spec: AttackSpec, certificate, x, y, correct) -> None:
        grid = self.grids[subject.id][spec.name]

        def compute() -> Cell:
            flags, radius = cells.smoothed(certificate, x, y, grid)
            return Cell([{"eps": eps} for eps in grid], flags, {"radius": radius})

        expected = Expected(len(x), "eps", grid, {"radius": (len(x),)})
        self._cell(subject, spec, "smoothed", {"attack": spec.describe(), "grid": list(grid)}, compute, expected)

    def _patch(self, subject: Subject, spec: AttackSpec, attack, x, y, correct) -> None:
        scales = self.grids[subject.id][spec.name]

        def compute() -> Cell:
            x_train, y_train = self.patch_training_images(subject, spec)
            goal = spec.params.target
            flags, success, patch = cells.patch(attack, subject.target, x, y, x_train, y_train, scales, goal)
            values = [{"scale": s, "target_success": t} for s, t in zip(scales, success, strict=True)]
            return Cell(values, flags, {"patch": patch})

        expected = Expected(len(x), "scale", scales, {"patch": tuple(subject.info.shape)})
        self._cell(subject, spec, "attack", {"attack": spec.describe(), "scales": list(scales)}, compute, expected)

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
        self._cell(subject, spec, "probe", parts, compute, Expected(size, "eps", grid))

    def patch_training_images(self, subject: Subject, spec: AttackSpec) -> tuple[np.ndarray, np.ndarray]:
        """The patch is optimised on training images so the test images it is judged on stay unseen."""
        if (subject.id, spec.name) in self.patch_images:  # handed over with a Ray task: workers need no data files
            return self.patch_images[subject.id, spec.name]
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


RUNS = {  # attack kind -> its cells
    "bounded": ChainRunner._bounded,
    "minimal": ChainRunner._minimal,
    "patch": ChainRunner._patch,
    "certified": ChainRunner._certified,
    "smoothed": ChainRunner._smoothed,
}
