"""The checks as the page shows them: the problems in full, the sweep-wide checks, and a model x check matrix.

A flat list is one row per model per check before the first plot; the matrix is one short row per model, one
mark per cell with the message on hover, and only a failure or a warning gets a row of its own. checks.json
and summary.md keep the flat list.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustcnn.report.checks import SEVERITY, Check, Status, titles

MARKS = {Status.PASS: "\u2713", Status.WARN: "!", Status.FAIL: "\u2717", Status.SKIP: "\u2013"}  # the key under it


@dataclass(frozen=True)
class Cell:
    checks: tuple[Check, ...]  # this model's results of this check: one, none (not run), rarely more

    @property
    def status(self) -> Status | None:
        """The most severe of the cell's checks (it shows one mark); None when the check did not run."""
        return max((c.status for c in self.checks), key=SEVERITY.__getitem__, default=None)

    @property
    def text(self) -> str:
        """What a screen reader says and the tests read: every status, in order."""
        return " ".join(c.status.value for c in self.checks) or "not run"

    @property
    def title(self) -> str:
        """The hover text: each check's message (with its status when the cell holds several)."""
        if len(self.checks) == 1:
            return self.checks[0].message
        return "\n".join(f"{c.status.value}: {c.message}" for c in self.checks) or "not run for this model"


@dataclass(frozen=True)
class CheckMatrix:
    columns: list[str]  # check names: the registered checks in their order, then the sweep's model checks
    rows: list[tuple[str, list[Cell]]]  # (model, one cell per column)
    problems: list[Check]  # every fail, then every warn, in full (model and sweep-wide alike)
    sweep_wide: list[Check]  # checks of the whole sweep (no model), every status


def check_matrix(checks: list[Check], models: list[str]) -> CheckMatrix:
    """Lays out `checks` by model (in `models` order, then any other model a check names) and check name."""
    per_model = [c for c in checks if c.model is not None]
    registered = list(titles())
    seen = {c.name: None for c in per_model}  # first-seen order, deduplicated
    columns = [name for name in registered if name in seen] + [name for name in seen if name not in registered]
    order = list(dict.fromkeys([*models, *(c.model for c in per_model)]))
    found: dict[tuple[str, str], list[Check]] = {}
    for c in per_model:
        found.setdefault((c.model, c.name), []).append(c)
    rows = [(model, [Cell(tuple(found.get((model, name), ()))) for name in columns]) for model in order]
    problems = sorted((c for c in checks if c.status in (Status.FAIL, Status.WARN)), key=lambda c: -SEVERITY[c.status])
    return CheckMatrix(columns, rows, problems, [c for c in checks if c.model is None])
