"""The unit of sweep work: a chain of cells of one model, and `ChainRunner`, which runs chains cell by cell.

Eps balls nest, so each eps of an attack attacks only the survivors of the previous one: an attack's cells
form a chain that must run in order (in a cascade suite, every attack of a norm joins one chain). Chains of
one model share nothing but its clean cell, so they can run anywhere: here, in a shard (`--shard`), or in a
Ray task (on_ray.py). Wherever a chain runs, `ChainRunner` computes its cells the same way: the same keys,
the same seeds, the same survivors, so the numbers are the same.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustcnn.results import EPS_TOLERANCE, RowKind
from robustcnn.sweep import cells
from robustcnn.sweep.batching import Batches
from robustcnn.sweep.cells import Examples
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.store import Cell, Expected, cell_key
from robustcnn.sweep.subjects import Subject
from robustcnn.sweep.suite import AttackSpec, Suite

CELLS_VERSION = 2  # what a cell computes, beyond the libraries' versions: in every key, so a change of it is never
# answered by an older cell. 2: PGD and APGD draw random starts per example (robustcnn/attacks/art.py), not per batch


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Done:
    """A finished cell of this sweep and what its rows are about (the cell itself holds only numbers)."""

    spec: AttackSpec | None  # None for the clean cell
    row_kind: RowKind  # what its rows are: clean, attack, probe, certified or smoothed
    key: str
    cell: Cell

    def evidence(self) -> list[tuple[str, float, np.ndarray]]:
        """(norm, eps, flags) of each row that counts towards nesting and the worst case."""
        if self.row_kind is not RowKind.ATTACK or not self.spec.kind.in_worst_case:
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
    was handed. `on_computed(subject, done)` hears of every cell computed here (not of those found). What each
    kind of attack computes is its `Kind`'s business (robustcnn/sweep/kinds): this class keys, seeds and keeps cells.
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
        self._seen: dict[str, set[tuple[str, str | None]]] = {}  # subject id -> (key, attack) of each cell in `done`
        self._by_attack: dict[tuple[str, str | None], list[Done]] = {}  # (subject id, attack) -> its cells in `done`
        self.inputs: dict[str, tuple[Examples, np.ndarray]] = {}  # subject id -> its test images, clean flags
        self.handed: dict[tuple[str, str], Any] = {}  # (subject id, attack name) -> a Ray task's `ray_payload`
        self.computing = True  # False: only read finished cells back, a missing one raises MissingCell
        self.bar = None

    # --- the plan ------------------------------------------------------------------------------
    def chains(self, subjects: list[Subject]) -> list[Chain]:
        """Every chain of the sweep, in plan order: per model, per attack (per norm in a cascade suite)."""
        chains = []
        for subject in subjects:
            groups: dict[str, list[AttackSpec]] = {}
            for spec in self.suite.attacks:
                joint = self.suite.cascade and not self.config.naive and spec.kind.in_worst_case
                groups.setdefault(f"norm {spec.norm.value}" if joint else spec.name, []).append(spec)
            chains += [Chain(subject, tuple(specs), len(chains) + i) for i, specs in enumerate(groups.values())]
        return chains

    def cell_count(self, chain: Chain) -> int:
        """Cells of a chain: what each of its attacks' kinds makes (one per eps, or one per grid; and probes)."""
        grids = self.grids[chain.subject.id]
        return sum(s.kind.cell_count(s, grids[s.name], self.config.probe) for s in chain.specs)

    # --- running -------------------------------------------------------------------------------
    def start(self, subject: Subject) -> np.ndarray:
        """The clean cell, which every chain of the model needs (which examples are correct to begin with)."""
        examples = Examples(subject.data, Batches(subject.target.batch_size, subject.id))  # images stay uint8
        compute = lambda: Cell([{"eps": 0.0}], cells.clean(subject.target, examples)[None], {})  # noqa: E731
        expected = Expected(len(examples), "eps", (0.0,))
        correct = self.cell(subject, None, RowKind.CLEAN, {"cell": "clean"}, compute, expected).flags[0]
        self.inputs[subject.id] = (examples, correct)
        return correct

    def run_chain(self, chain: Chain) -> None:
        subject = chain.subject
        for spec in chain.specs:
            spec = self.adapted(subject, spec)
            attack = spec.attack_class(spec.name, spec.norm, spec.params, subject.target)
            spec.kind.run(self, subject, spec, attack)

    def gallery_keep(self, subject: Subject, spec: AttackSpec, eps: float) -> cells.Keep | None:
        """What a bounded cell at `eps` hands its adversarial examples to, for the gallery (`Sweep`); none here."""
        return None

    def adapted(self, subject: Subject, spec: AttackSpec) -> AttackSpec:
        """`spec` as it runs on this model: adapted to what its model checks found (EOT on a random model, ...).
        Its keys, rows and survivors are those of the adapted attack, wherever the chain runs."""
        return spec.adapted(subject.target)[0]

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
        if subject.target.draws > 1:  # a random model judged by a majority of passes; absent otherwise: old keys hold
            common["draws"] = subject.target.draws
        if subject.info.variant:  # an image folder's transform and label files; absent otherwise, so old keys hold
            common["data"] = subject.info.variant
        key = cell_key({"model": subject.card.key, "versions": self.versions, "cells": CELLS_VERSION, **common})
        return key, self.config.seed * 1_000_003 + int(cell_key(common)[:8], 16)

    def cell(
        self, subject: Subject, spec: AttackSpec | None, row_kind: RowKind, parts: dict, compute, expected: Expected
    ) -> Cell:
        """The cell from the store if a matching one is there (and holds what `expected` says), else computed and
        saved; recorded as done either way. `parts`: what the cell's result depends on besides the model and data."""
        key, seed = self._keys(subject, **parts)
        cell = self.store.load(key, expected)
        if cell is not None:
            self._record(subject, Done(spec, row_kind, key, cell))
            return cell
        if not self.computing:
            raise MissingCell(key)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{subject.id} {spec.name if spec else row_kind.value}", refresh=True)
        seed_all(seed)  # per cell: order, resume and where it runs do not matter
        started = time.perf_counter()
        cell = compute()
        seconds = round(time.perf_counter() - started, 3)
        for values in cell.values:
            values.update(n=cell.flags.shape[1], seconds=seconds)
        self.accept(subject, Done(spec, row_kind, key, cell))
        return cell

    def accept(self, subject: Subject, done: Done) -> None:
        """A newly computed cell, here or in a Ray task: saved, recorded, and heard of by `on_computed`."""
        self.store.save(done.key, done.cell)
        self._record(subject, done)
        if self.on_computed is not None:
            self.on_computed(subject, done)

    def _record(self, subject: Subject, done: Done) -> None:
        """Adds a finished cell once, keeping plan order (chains may finish in any order). Two attacks of the suite
        with the same settings under two names share a cell (same key), and each still gets its rows.
        Constant work per cell (a set, a sorted insert), so resuming 100,000 cells is not quadratic."""
        name = done.spec.name if done.spec else None
        seen = self._seen.setdefault(subject.id, set())
        if (done.key, name) in seen:
            return
        seen.add((done.key, name))
        in_plan = lambda d: (self.position[d.spec.name] if d.spec else -1, d.row_kind is RowKind.PROBE)  # noqa: E731
        bisect.insort_right(self.done.setdefault(subject.id, []), done, key=in_plan)  # after equals: stable
        self._by_attack.setdefault((subject.id, name), []).append(done)
        if self.bar is not None:
            self.bar.update()

    def unbroken(self, subject: Subject, spec: AttackSpec, eps: float) -> np.ndarray:
        """Examples no finished row of this attack at a smaller eps broke (in a cascade: nor any earlier
        attack of its norm at an eps up to this one). Eps balls nest, so those broken stay broken."""
        earlier = self._earlier(spec) if self.suite.cascade else set()
        flags = np.ones(len(subject.subset), dtype=bool)
        for name in (spec.name, *earlier):
            mine = name == spec.name
            for done in self._by_attack.get((subject.id, name), []):
                for _, row_eps, row_flags in done.evidence():
                    if row_eps < eps - EPS_TOLERANCE or (not mine and row_eps <= eps + EPS_TOLERANCE):
                        flags &= row_flags
        return flags

    def _earlier(self, spec: AttackSpec) -> set[str]:
        """The attacks before `spec` in the suite with its norm: what a cascade runs `spec` after."""
        index = self.position[spec.name]
        return {s.name for s in self.suite.attacks[:index] if s.norm is spec.norm and s.kind.in_worst_case}

    def cascade_identity(self, subject: Subject, spec: AttackSpec) -> dict[str, Any]:
        if not self.suite.cascade:
            return {}
        before = [self.adapted(subject, s) for s in self.suite.attacks if s.name in self._earlier(spec)]
        return {"after": [[s.describe(), list(self.grids[subject.id][s.name])] for s in before]}
