"""The attack kinds, one module each: what the sweep does differently for each (see base.py, `Kind`).

A new kind: a module here with a `@register` class (its cells in `run`, its traits as class attributes), its
import below, and `kind = "<name>"` on the attack classes of that kind (robustcnn/attacks/base.py).
"""

from __future__ import annotations

from robustcnn.sweep.kinds import bounded, certified, minimal, patch, smoothed  # noqa: F401  (registers the kinds)
from robustcnn.sweep.kinds.base import KINDS, Kind

__all__ = ["KINDS", "Kind"]
