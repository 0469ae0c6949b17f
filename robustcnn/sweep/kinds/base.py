"""`Kind`: everything the sweep does differently for one kind of attack, asked of one object, never of a name.

An attack class names its kind (`Attack.kind`, e.g. "bounded"); `AttackSpec.kind` is the `Kind` registered under
that name (`KINDS`). The chain runner, the rows, the worst case, the gallery and the Ray driver ask the kind:
which cells it computes and how (`run`), how many (`cell_count`), whether its rows bound robust accuracy from
above (`in_worst_case`), whether it gets probes, what a Ray task needs besides the test images (`ray_payload`),
and what it leaves once its model is done (`after`). A new kind is one module here with a `@register` class.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from robustcnn.data import DatasetInfo
from robustcnn.registry import Registry
from robustcnn.results import RowKind
from robustcnn.sweep.cells import Examples
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.store import Cell, Expected
from robustcnn.sweep.subjects import Subject


class Spec(Protocol):
    """What a kind reads of a suite entry (`robustcnn.sweep.suite.AttackSpec`)."""

    name: str  # unique within the suite
    params: Any  # the attack's Params dataclass
    attack_class: type  # the attack's class (robustcnn.attacks)
    scales: tuple[float, ...] | None  # the grid of a kind whose axis is "scale" (the patch)

    def describe(self) -> dict[str, Any]: ...


class Runner(Protocol):
    """What a kind asks of the chain runner (`robustcnn.sweep.chains.ChainRunner`)."""

    config: SweepConfig
    grids: dict[str, dict[str, tuple[float, ...]]]  # subject id -> attack name -> sorted eps (or scales)
    handed: dict[tuple[str, str], Any]  # (subject id, attack name) -> the `ray_payload` a Ray task was handed
    inputs: dict[str, tuple[Examples, np.ndarray]]  # subject id -> its test images (uint8 in memory, float one batch
    # at a time) and (n,) clean flags: which examples the model gets right without attack

    def cell(
        self,
        subject: Subject,
        spec: Spec,
        row_kind: RowKind,
        parts: dict,
        compute: Callable[[], Cell],
        expected: Expected,
    ) -> Cell: ...

    def unbroken(self, subject: Subject, spec: Spec, eps: float) -> np.ndarray: ...

    def cascade_identity(self, subject: Subject, spec: Spec) -> dict[str, Any]: ...

    def gallery_keep(
        self, subject: Subject, spec: Spec, eps: float
    ) -> Callable[[np.ndarray, np.ndarray], None] | None: ...


class Kind:
    """One kind of attack as the sweep runs it. Subclasses set the class attributes and `run`."""

    name: ClassVar[str]  # the name attack classes give as their `kind`
    row_kind: ClassVar[RowKind] = RowKind.ATTACK  # what the rows of its cells are
    axis: ClassVar[str] = "eps"  # what its grid holds: "eps" (radii, pixel units; read by the headline) or "scale"
    per_eps: ClassVar[bool] = False  # one cell per eps of the grid, else one cell answers the whole grid
    in_worst_case: ClassVar[bool] = False  # its rows bound robust accuracy from above at an eps: they join the
    # worst case, the nesting of later eps and a cascade's order of attacks

    @property
    def has_eps(self) -> bool:
        """Whether its grid is eps (the headline reads one of them), not patch scales."""
        return self.axis == "eps"

    def check_data(self, spec: Spec, info: DatasetInfo) -> None:
        """A one-line UsageError, before anything is written, for a value of `spec` only the data can judge."""

    def run(self, runner: Runner, subject: Subject, spec: Spec, attack: Any) -> None:
        """Computes (or finds) every cell of `spec` on `subject` through `runner.cell`; `attack` is spec.attack_class
        built on the model, and `runner.inputs[subject.id]` holds the images (with labels) and clean flags."""
        raise NotImplementedError

    def gets_probes(self, spec: Spec) -> bool:
        """Whether a probe cell (the first examples attacked afresh at every eps, for the report's checks) follows."""
        return False

    def in_gallery(self, spec: Spec) -> bool:
        """Whether the gallery may show its adversarial examples (it must generate them at an eps)."""
        return False

    def cell_count(self, spec: Spec, grid: tuple[float, ...], probe: int) -> int:
        """Cells `run` makes: one per eps or one for the grid, plus the probe's (`probe`: --probe examples)."""
        return (len(grid) if self.per_eps else 1) + int(bool(probe) and self.gets_probes(spec))

    def ray_payload(self, runner: Runner, subject: Subject, spec: Spec) -> Any | None:
        """What a Ray task needs for `spec` besides the model and its test images (None: nothing); the task's
        runner finds it in `runner.handed`, so workers need no data files."""
        return None

    def after(self, out: Path, subject: Subject, spec: Spec, cell: Cell) -> None:
        """What a finished cell of `spec` leaves in the sweep directory once all of its model's cells are done."""

    def row_notes(self, cell: Cell) -> dict[str, Any]:
        """What its rows' params add from the cell itself (how a proof was made), beside the attack's parameters."""
        return {}


KINDS: Registry[Kind] = Registry("attack kind")


def register(cls: type[Kind]) -> type[Kind]:
    """Class decorator: registers one instance of the kind under its `name`."""
    KINDS.register(cls.name)(cls())
    return cls
