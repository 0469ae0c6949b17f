"""Attacks by name, all through ART. Add one by writing a module with an `@ATTACKS.register` class."""

from __future__ import annotations

from robustcnn.attacks import apgd, certified, fgsm, minimal, patch, pgd, smoothing, square  # noqa: F401  (registers the attacks)
from robustcnn.attacks.base import ATTACKS, Attack, BoundedAttack, CertifiedBound, MinimalAttack, PatchAttack, Target

__all__ = [
    "ATTACKS",
    "Attack",
    "BoundedAttack",
    "CertifiedBound",
    "MinimalAttack",
    "PatchAttack",
    "Target",
    "attack_names",
]


def attack_names() -> list[str]:
    return ATTACKS.names()
