"""bounded: attacks that find x_adv inside the eps ball (FGSM, PGD, APGD, Square; `BoundedAttack`).

One cell per eps. Eps balls nest, so in nested mode each eps attacks only the examples no smaller eps (and, in
a cascade, no earlier attack of the norm) broke; naive mode attacks every clean-correct example at every eps.
A white-box one is followed by a probe cell: the first --probe examples attacked afresh at every eps, correct or
not, which is what the report's checks read (nesting makes the curves non-increasing by construction).
"""

from __future__ import annotations

from typing import Any

from robustcnn.results import RowKind
from robustcnn.sweep import cells
from robustcnn.sweep.kinds.base import Kind, Runner, Spec, register
from robustcnn.sweep.store import Cell, Expected
from robustcnn.sweep.subjects import Subject


@register
class Bounded(Kind):
    name = "bounded"
    per_eps = True
    in_worst_case = True

    def gets_probes(self, spec: Spec) -> bool:
        return spec.attack_class.box == "white"  # a black-box attack costs thousands of queries per example

    def in_gallery(self, spec: Spec) -> bool:
        return spec.attack_class.box == "white"

    def run(self, runner: Runner, subject: Subject, spec: Spec, attack: Any) -> None:
        examples, correct = runner.inputs[subject.id]
        grid = runner.grids[subject.id][spec.name]
        for i, eps in enumerate(grid):
            if runner.config.naive:
                todo, mode = correct, {"mode": "naive"}
            else:
                todo = correct & runner.unbroken(subject, spec, eps)
                mode = {"mode": "nested", "prior": list(grid[:i]), **runner.cascade_identity(subject, spec)}

            def compute(eps=eps, todo=todo) -> Cell:
                keep = runner.gallery_keep(subject, spec, eps)
                flags = cells.bounded(attack, subject.target, examples, todo, eps, keep)
                return Cell([{"eps": eps}], flags[None], {})

            parts = {"attack": spec.describe(), "eps": eps, **mode}
            runner.cell(subject, spec, self.row_kind, parts, compute, Expected(len(examples), "eps", (eps,)))
        if runner.config.probe and self.gets_probes(spec):
            _probe(runner, subject, spec, attack, examples)


def _probe(runner: Runner, subject: Subject, spec: Spec, attack: Any, examples: cells.Examples) -> None:
    grid = runner.grids[subject.id][spec.name]
    size = min(runner.config.probe, len(examples))

    def compute() -> Cell:
        flags = cells.probe(attack, subject.target, examples.first(size), grid)
        return Cell([{"eps": eps} for eps in grid], flags, {})

    parts = {"attack": spec.describe(), "grid": list(grid), "probe": size}
    runner.cell(subject, spec, RowKind.PROBE, parts, compute, Expected(size, "eps", grid))
