"""minimal: attacks that find the smallest perturbation they can (Carlini-Wagner, DeepFool; `MinimalAttack`).

One run, one cell, answers every eps of the grid: an example is robust at eps if the attack failed on it or
needed more than eps. Its rows bound robust accuracy from above, as a bounded attack's do.
"""

from __future__ import annotations

from typing import Any

from robustcnn.sweep import cells
from robustcnn.sweep.kinds.base import Kind, Runner, Spec, register
from robustcnn.sweep.store import Cell, Expected
from robustcnn.sweep.subjects import Subject


@register
class Minimal(Kind):
    name = "minimal"
    in_worst_case = True

    def run(self, runner: Runner, subject: Subject, spec: Spec, attack: Any) -> None:
        examples, correct = runner.inputs[subject.id]
        grid = runner.grids[subject.id][spec.name]

        def compute() -> Cell:
            flags, distance = cells.minimal(attack, subject.target, examples, correct, grid)
            return Cell([{"eps": eps} for eps in grid], flags, {"distance": distance})

        expected = Expected(len(examples), "eps", grid, {"distance": (len(examples),)})
        runner.cell(subject, spec, self.row_kind, {"attack": spec.describe(), "grid": list(grid)}, compute, expected)
