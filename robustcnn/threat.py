"""Threat models: the norm and the radius eps, always in [0, 1] pixel units."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

from robustcnn.errors import UsageError


class Norm(str, Enum):
    LINF = "inf"
    L2 = "2"

    @classmethod
    def parse(cls, value: object) -> Norm:
        """Accepts the spellings people use: inf, linf, Linf, np.inf; 2, l2, L2."""
        if isinstance(value, Norm):
            return value
        text = str(value).strip().lower()
        if text in {"inf", "linf", "l_inf"} or value == math.inf:
            return cls.LINF
        if text in {"2", "2.0", "l2"}:
            return cls.L2
        raise UsageError(f"unknown norm {value!r}; choose one of: inf (Linf), 2 (L2)")

    @property
    def art(self) -> float:
        """The value ART's `norm` argument expects."""
        return math.inf if self is Norm.LINF else 2

    @property
    def label(self) -> str:
        return "Linf" if self is Norm.LINF else "L2"


_FRACTION = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*$", re.I)


def parse_eps(value: object, what: str = "eps") -> float:
    """A number or a fraction such as '8/255' -> float. Range is checked by `check_eps`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _FRACTION.match(str(value))
    if not match:
        raise UsageError(f"{what} {value!r} is not a number; write e.g. 0.3 or 8/255")
    numerator, denominator = match.groups()
    if denominator is not None and float(denominator) == 0:
        raise UsageError(f"{what} {value!r} divides by zero; write e.g. 8/255")
    return float(numerator) / (float(denominator) if denominator else 1.0)


def check_eps(eps: float, norm: Norm = Norm.LINF, what: str = "eps") -> float:
    """Linf eps must lie in [0, 1]; L2 eps is a Euclidean length in the same pixel units, so only >= 0.

    A Linf eps above 1 is almost always 0-255 units (8 meaning 8/255): the message says so.
    """
    if not math.isfinite(eps) or eps < 0:
        raise UsageError(f"{what} {eps!r} is not allowed; it must be a finite number >= 0 in [0, 1] pixel units")
    if norm is Norm.LINF and eps > 1:
        hint = f"; did you mean {eps:g}/255 = {eps / 255:.4f}?" if eps <= 255 else ""
        raise UsageError(f"{what} {eps:g} is outside [0, 1]: eps is in [0, 1] pixel units, not 0-255{hint}")
    return eps


@dataclass(frozen=True)
class ThreatModel:
    norm: Norm  # the distance that bounds the perturbation
    eps: float  # radius in [0, 1] pixel units

    def __post_init__(self) -> None:
        check_eps(self.eps, self.norm)

    def describe(self) -> str:
        return f"{self.norm.label} eps={self.eps:.4g}"

    def to_dict(self) -> dict[str, object]:
        return {"norm": self.norm.value, "eps": self.eps}

    @classmethod
    def from_dict(cls, data: dict) -> ThreatModel:
        return cls(Norm.parse(data["norm"]), float(data["eps"]))
