"""The attack base classes. Each attack module wraps one ART class; this file does the shared chores.

Each class names its kind (`Attack.kind`), which says how the sweep runs it (robustcnn/sweep/kinds, one module each):
- `BoundedAttack` ("bounded"): finds x_adv inside the eps ball (FGSM, PGD, APGD, Square); run once per eps.
- `MinimalAttack` ("minimal"): finds the smallest perturbation it can (Carlini-Wagner, DeepFool); one run gives
  the accuracy at every eps: an example is robust at eps if the attack failed or needed more than eps.
- `PatchAttack` ("patch"): optimises one universal patch on training images, then pastes it at several scales.
- `CertifiedBound` ("certified"): proves examples robust (ibp, crown); a lower bound where attacks give upper ones.
- `Smoothing` ("smoothed", attacks/smoothing.py): certified L2 radii of the randomized-smoothing classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch

from robustcnn.attacks.art import Starts, per_example_starts, pin_device
from robustcnn.config import from_mapping, to_dict
from robustcnn.errors import UsageError
from robustcnn.registry import Registry
from robustcnn.results import Adaptation
from robustcnn.threat import Norm


@dataclass(frozen=True)
class NoParams:
    """An attack with no tunable parameters."""


@dataclass(frozen=True)
class Findings:
    """What the sweep's model checks found about a model (robustcnn/sweep/model_checks.py): how its attacks adapt."""

    random: bool = False  # outputs differ between identical calls (check `deterministic` failed)
    masked: bool = False  # input gradients zero for many examples (check `gradients` failed)
    rounding_restores: bool = False  # masked, and rounding ops passed straight through bring them back (gradients-bpda)


@dataclass(frozen=True)
class Target:
    """What an attack runs against: an ART classifier over the model, on one device."""

    classifier: Any  # art.estimators.classification.PyTorchClassifier
    model: torch.nn.Module
    device: torch.device
    batch_size: int  # examples per ART call: large on GPUs, ~128 on CPUs (cache-bound); the sweep may halve it
    num_classes: int
    batch_choice: Any = None  # how batch_size was chosen ({"requested": N or "auto", ...}), for the manifest
    findings: Findings = Findings()  # what the model checks found (randomness, masked gradients): attacks adapt to it
    draws: int = 1  # forward passes that judge a prediction: a random model is right where a majority of them are

    def votes(self, x: np.ndarray) -> np.ndarray:
        """(draws, k) predicted classes of one batch x (k, C, H, W): one row per forward pass."""
        with torch.no_grad():
            inputs = torch.from_numpy(x).to(self.device)
            return np.stack([self.model(inputs).argmax(1).cpu().numpy() for _ in range(self.draws)])

    def correct(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(k,) True where the model classifies x as y: in one pass, or for a random model in a strict majority
        of `draws` passes (a tie counts as wrong: the defence must win, not draw)."""
        return self.majority(self.votes(x), y)

    def majority(self, votes: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(k,) True where a strict majority of `votes` (draws, k) is y."""
        return (votes == y).sum(0) * 2 > len(votes)

    def labels(self, x: np.ndarray) -> np.ndarray:
        """(k,) the class most passes predict (the lowest of tied classes); a deterministic model's prediction."""
        votes = self.votes(x)
        if self.draws == 1:
            return votes[0]
        counts = np.stack([(votes == c).sum(0) for c in range(self.num_classes)], axis=1)  # (k, classes)
        return counts.argmax(1)


class Attack:
    """Shared by every attack: declared capabilities, parameter parsing, and device pinning."""

    kind: ClassVar[str]  # how the sweep runs it: a name in robustcnn/sweep/kinds (KINDS), e.g. "bounded"
    box: ClassVar[str] = "white"  # "black" when only model outputs are used (no gradients)
    norms: ClassVar[tuple[Norm, ...]] = (Norm.LINF, Norm.L2)
    Params: ClassVar[type] = NoParams

    def __init__(self, name: str, norm: Norm, params: Any, target: Target):
        self.name, self.norm, self.params, self.target = name, norm, params, target

    @classmethod
    def parse_params(cls, entry: dict[str, Any], where: str) -> Any:
        return from_mapping(cls.Params, entry, where)

    @classmethod
    def check_norm(cls, norm: Norm, where: str) -> None:
        if norm not in cls.norms:
            allowed = ", ".join(n.value for n in cls.norms)
            raise UsageError(f"{where}norm {norm.value!r} is not supported by this attack; allowed: {allowed}")

    @classmethod
    def adapt(cls, name: str, params: Any, target: Target) -> tuple[Any, tuple[Adaptation, ...]]:
        """The params as they run on `target`'s model, and each change made for it (adaptive attacks, fallbacks)."""
        return params, ()

    @classmethod
    def describe_params(cls, params: Any) -> dict[str, Any]:
        """The parameters as they run (what results.csv records): subclasses correct what ART overrides."""
        return to_dict(params) if fields(params) else {}

    def check_model(self) -> None:
        """A one-line UsageError, before any work, when the model has something this attack cannot handle."""

    def pin_device(self, art_attack: Any) -> Any:
        """ART re-wraps some estimators on its own idea of the device; put them back on ours."""
        estimator = getattr(art_attack, "estimator", None)
        if estimator is not None and hasattr(estimator, "_device"):
            pin_device(estimator, self.target.model, self.target.device)
        self.target.model.to(self.target.device)
        return art_attack

    def equipped(self, art_attack: Any) -> Any:
        """The ART attack as it runs on this model (adaptive attacks change its gradient: attacks/adaptive.py)."""
        return art_attack


class BoundedAttack(Attack):
    kind = "bounded"

    def build(self, eps: float) -> Any:
        """The configured ART attack for one radius."""
        raise NotImplementedError

    def art_attack(self, eps: float) -> Any:
        """The ART object for `eps`, built once per eps and reused for every batch."""
        cache = self.__dict__.setdefault("_built", {})
        if eps not in cache:
            cache.clear()
            cache[eps] = self.pin_device(self.equipped(self.build(eps)))
        return cache[eps]

    def records_iterates(self) -> bool:
        """Whether every iterate counts (AutoAttack's rule), not only the returned one: iterative attacks."""
        return bool(getattr(self.params, "any_iterate", False))

    def watches_iterates(self, eps: float) -> bool:
        """Whether the attack's own loop keeps every misclassified iterate (lean APGD), so no forward hook is needed."""
        return False

    def generate(self, x: np.ndarray, y: np.ndarray, eps: float, starts: Starts | None = None) -> np.ndarray:
        """x (n, C, H, W) float32 in [0, 1], y (n,) true labels -> x_adv with ||x_adv - x|| <= eps.

        `starts`: random starts drawn per example (PGD, APGD), so an example's x_adv does not depend on the batch it
        is in; None: ART's, drawn for the whole batch from numpy's global generator.
        """
        with per_example_starts(starts, y):
            if not self.records_iterates() or self.watches_iterates(eps):
                return self.run(x, y, eps)
            from robustcnn.attacks.art import IterateRecorder

            with IterateRecorder(self.target.model, x, y, eps, self.norm.art) as recorder:
                x_adv = self.run(x, y, eps)
            return recorder.apply(x_adv)

    def run(self, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        return self.art_attack(eps).generate(x, y)  # y: true labels, never ART's predicted-label default


class MinimalAttack(Attack):
    kind = "minimal"

    def build(self) -> Any:
        raise NotImplementedError

    def generate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """x_adv as close to x as the attack can get while misclassified (x itself where it gives up)."""
        if "_built" not in self.__dict__:
            self._built = self.pin_device(self.build())
        return self._built.generate(x, y)


class PatchAttack(Attack):
    kind = "patch"
    norms = ()

    def train_patch(self, x: np.ndarray, y: np.ndarray, scales: tuple[float, ...]) -> np.ndarray:
        """Optimises the patch on training images; returns it as (C, H, W) in [0, 1]."""
        raise NotImplementedError

    def apply(self, x: np.ndarray, scale: float, patch: np.ndarray, scales: tuple[float, ...]) -> np.ndarray:
        """Pastes `patch` at `scale` (fraction of the image side) at a random place on each image."""
        raise NotImplementedError


class CertifiedBound(Attack):
    """Not an attack: a proof. Flags an example only when no input in its eps ball can change the prediction
    from the true label, so its accuracy is a lower bound on robust accuracy where attacks give upper bounds."""

    kind = "certified"

    def certify(self, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        """(n,) bool: proven correct at every input within eps of x (and in the pixel range)."""
        raise NotImplementedError

    def cell_extra(self) -> dict[str, np.ndarray]:
        """Float arrays each cell keeps beside its flags: what qualifies the proof (crown: layers left to intervals)."""
        return {}


ATTACKS: Registry[type[Attack]] = Registry("attack")
