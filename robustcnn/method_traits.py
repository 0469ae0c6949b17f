"""What a training method is, as the guard, the report and the sweep need to know it: `MethodTraits`.

Each training method declares its traits beside its code (`traits` on its class in robustcnn/train/methods.py,
the METHODS registry). Training writes them into run.json ("method_traits"), the sweep copies them into the
manifest's model entry, and the overfitting rule and the report read them there: nothing decides from a
method's name. Runs written before run.json recorded them are read with `LEGACY`. No torch here: the report
imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

STANDARD = "standard"  # the METHODS name of training on clean images (run.json's "method" without --adv)
MADRY_STEP = 2.5  # default attack step as eps / steps times this (Madry et al. 2018): PGD can cross the ball


@dataclass(frozen=True)
class MethodTraits:
    """What a training method is: declared by its class, recorded in run.json, read by whoever judges the run."""

    adversarial: bool = False  # aims at robustness to attacks: the report looks for a gap its attack left
    guarded: bool = False  # judged by the overfitting rule (robustcnn/overfitting.py): must resist PGD-10
    single_step: bool = False  # its attack takes exactly one gradient step: the rule counts it as single-step
    gaussian_noise: bool = False  # trains on Gaussian noise at --sigma: what randomized smoothing certifies
    attack_steps: int = 10  # default --attack-steps
    attack_lr_per_eps: float | None = None  # default --attack-lr in units of eps; None: MADRY_STEP * eps / steps

    def __post_init__(self) -> None:
        if self.single_step and self.attack_steps != 1:
            raise ValueError(f"a single-step method takes attack_steps 1, not {self.attack_steps}")

    def attack_lr(self, eps: float, steps: int) -> float:
        """The default attack step in pixel units, for `steps` steps in a ball of radius `eps`."""
        if self.attack_lr_per_eps is not None:
            return self.attack_lr_per_eps * eps
        return MADRY_STEP * eps / steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "method_traits") -> MethodTraits:
        """From run.json or the manifest; a missing field takes its default, an unknown or mistyped one is an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be an object, not {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{where} has unknown field {unknown[0]!r}; known fields: {', '.join(known)}")
        for name, value in data.items():
            if not _fits(name, value):
                raise ValueError(f"{where}.{name} {value!r} is not a {known[name].type}")
        return cls(**data)


def _fits(name: str, value: Any) -> bool:
    if name == "attack_steps":
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if name == "attack_lr_per_eps":
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)
    return isinstance(value, bool)


_ATTACK = MethodTraits(adversarial=True, guarded=True)
LEGACY = {
    STANDARD: MethodTraits(),
    "pgd": _ATTACK,
    "trades": _ATTACK,
    "ibp": _ATTACK,  # certified training: robust to any attack in the ball, so judged like adversarial training
    "fgsm-rs": MethodTraits(adversarial=True, guarded=True, single_step=True, attack_steps=1, attack_lr_per_eps=1.25),
    "n-fgsm": MethodTraits(adversarial=True, guarded=True, single_step=True, attack_steps=1, attack_lr_per_eps=1.0),
    "gaussian": MethodTraits(gaussian_noise=True),
}  # the traits of the methods that ran before run.json recorded them, frozen: old runs are judged as they were


def read_traits(method: str, recorded: Any = None) -> MethodTraits | None:
    """A run's traits as its run.json (or the manifest's copy of it) recorded them; for a run written before it
    did, its method's traits then (`LEGACY`); None for a model trained elsewhere (method "") or an unknown one."""
    if recorded is not None:
        return MethodTraits.from_dict(recorded)
    return LEGACY.get(method)
