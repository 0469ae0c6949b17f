"""smoothed: randomized smoothing (`Smoothing`), rows of kind "smoothed" at each L2 radius of the grid.

One cell for the whole grid, over every image, clean-correct or not: it certifies the smoothed classifier,
another classifier than the model the attacks test, so its rows are never compared with the attacks' rows.
"""

from __future__ import annotations

from typing import Any

from robustcnn.results import RowKind
from robustcnn.sweep import cells
from robustcnn.sweep.kinds.base import Kind, Runner, Spec, register
from robustcnn.sweep.store import Cell, Expected
from robustcnn.sweep.subjects import Subject


@register
class Smoothed(Kind):
    name = "smoothed"
    row_kind = RowKind.SMOOTHED

    def run(self, runner: Runner, subject: Subject, spec: Spec, certificate: Any) -> None:
        examples, _ = runner.inputs[subject.id]
        grid = runner.grids[subject.id][spec.name]

        def compute() -> Cell:
            flags, radius = cells.smoothed(certificate, examples, grid)
            return Cell([{"eps": eps} for eps in grid], flags, {"radius": radius})

        expected = Expected(len(examples), "eps", grid, {"radius": (len(examples),)})
        runner.cell(subject, spec, self.row_kind, {"attack": spec.describe(), "grid": list(grid)}, compute, expected)
