"""--fail-under ATTACK@EPS=ACC: turn a sweep into a CI gate (exit 1 when a model falls below)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from robustcnn.errors import UsageError
from robustcnn.results import RowKind
from robustcnn.threat import parse_eps

_GATE = re.compile(r"^(?P<attack>[^@=\s]+)(?:@(?P<eps>[^=\s]+))?=(?P<acc>[^=\s]+)$")


@dataclass(frozen=True)
class Gate:
    attack: str  # suite entry name, "clean" or "worst-case"
    eps: float | None  # None only for "clean"
    minimum: float  # accuracy in [0, 1]

    def __str__(self) -> str:
        at = "" if self.eps is None else f"@{self.eps:g}"
        return f"{self.attack}{at}={self.minimum:g}"


def parse_gate(text: str) -> Gate:
    match = _GATE.match(text.strip())
    if not match:
        raise UsageError(f"--fail-under {text!r} is not ATTACK@EPS=ACC (e.g. pgd-linf@0.3=0.80, clean=0.95)")
    attack, eps, accuracy = match["attack"], match["eps"], match["acc"]
    if eps is None and attack != "clean":
        raise UsageError(f"--fail-under {text!r} needs an eps: write {attack}@EPS={accuracy}")
    try:
        minimum = float(accuracy)
    except ValueError:
        minimum = math.nan
    if not 0 <= minimum <= 1:
        raise UsageError(f"--fail-under {text!r}: accuracy {accuracy!r} must be a number in [0, 1], e.g. 0.8")
    return Gate(attack, None if eps is None else parse_eps(eps, f"--fail-under {text!r} eps"), minimum)


def _matches(rows: Iterable[Mapping[str, Any]], gate: Gate) -> list[Mapping[str, Any]]:
    return [
        row
        for row in rows
        if row["attack"] == gate.attack
        and row["kind"] != RowKind.PROBE.value  # a few examples, for the checks only
        and (gate.eps is None or abs(float(row["eps"]) - gate.eps) < 1e-6)
    ]


def check_gates_cover(gates: list[Gate], planned: dict[str, dict[str, list[float]]]) -> None:
    """Before any attack runs: every gate must name an attack and an eps the sweep will produce per model."""
    for gate in gates:
        for model, grids in planned.items():
            if gate.attack not in grids:
                raise UsageError(
                    f"--fail-under {gate}: no attack {gate.attack!r} in this sweep; have: {', '.join(grids)}"
                )
            grid = grids[gate.attack]
            if gate.eps is not None and not any(math.isclose(gate.eps, e, abs_tol=1e-6) for e in grid):
                allowed = ", ".join(f"{e:g}" for e in grid)
                raise UsageError(
                    f"--fail-under {gate}: model {model!r} has no {gate.attack} row at eps {gate.eps:g}; "
                    f"have: {allowed}"
                )


def failed_gates(rows: Iterable[Mapping[str, Any]], gates: list[Gate]) -> list[str]:
    """One line per (model, gate) below its minimum; `rows`: the sweep's results rows."""
    rows = list(rows)
    failures = []
    for gate in gates:
        for row in _matches(rows, gate):
            if row["accuracy"] < gate.minimum:
                at = "" if gate.eps is None else f"@{gate.eps:g}"
                failures.append(f"{row['model']}: {gate.attack}{at} accuracy {row['accuracy']:.4f} < {gate.minimum:g}")
    return failures
