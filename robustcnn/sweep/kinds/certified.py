"""certified: bounds that prove an example robust (ibp, crown; `CertifiedBound`), rows of kind "certified".

One cell per eps; each eps bounds only what the previous one certified (a proof at eps holds below it). A
certified accuracy is a lower bound on robust accuracy, so its rows never join the worst case: the report
brackets the attacks' upper bounds with them.
"""

from __future__ import annotations

from typing import Any

from robustcnn.results import RowKind
from robustcnn.sweep import cells
from robustcnn.sweep.kinds.base import Kind, Runner, Spec, register
from robustcnn.sweep.store import Cell, Expected
from robustcnn.sweep.subjects import Subject


@register
class Certified(Kind):
    name = "certified"
    row_kind = RowKind.CERTIFIED
    per_eps = True

    def run(self, runner: Runner, subject: Subject, spec: Spec, bound: Any) -> None:
        examples, correct = runner.inputs[subject.id]
        todo = correct
        grid = runner.grids[subject.id][spec.name]
        for i, eps in enumerate(grid):

            def compute(eps=eps, todo=todo) -> Cell:
                flags = cells.certified(bound, subject.target, examples, todo, eps)[None]
                return Cell([{"eps": eps}], flags, bound.cell_extra())

            parts = {"attack": spec.describe(), "eps": eps, "prior": list(grid[:i])}
            extra = {name: array.shape for name, array in bound.cell_extra().items()}
            expected = Expected(len(examples), "eps", (eps,), extra)
            todo = runner.cell(subject, spec, self.row_kind, parts, compute, expected).flags[0]

    def row_notes(self, cell: Cell) -> dict[str, Any]:
        if "intervals_only" not in cell.extra:
            return {}
        count, total = (int(v) for v in cell.extra["intervals_only"])
        return {"intervals_only": f"{count}/{total}"}  # relaxed layers whose bounds stayed intervals (memory)
