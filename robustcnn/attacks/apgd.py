"""apgd-ce, apgd-dlr, apgd-t: Croce & Hein (2020), step-size-free PGD, the white-box half of AutoAttack
(ART `AutoProjectedGradientDescent`). DLR is invariant to the logits' scale, which defeats some
gradient masking that fools cross-entropy. Every iterate counts (AutoAttack's rule): an example is broken
when any point APGD evaluated inside the ball is misclassified, not only the one ART returns.

Batch-independent as the sweep runs it: random starts are drawn per example (`per_example_starts`), and ART's
step sizes are per image. One exception in ART: a batch stops early when every loss in it is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robustcnn.art_setup import import_art
from robustcnn.attacks.art import narrowed_starts
from robustcnn.attacks.base import ATTACKS, BoundedAttack
from robustcnn.config import BOOL, INT, option
from robustcnn.errors import UsageError


@dataclass(frozen=True)
class ApgdParams:
    steps: int = option(100, "iterations (AutoAttack uses 100)", INT)
    restarts: int = option(1, "random starts (ART always starts at a random point of the ball)", INT)
    any_iterate: bool = option(True, "broken when any iterate in the ball is misclassified (AutoAttack)", BOOL)


class _Apgd(BoundedAttack):
    Params = ApgdParams
    loss_type = "cross_entropy"
    targeted = False

    def build(self, eps):
        import_art()
        from art.attacks.evasion import AutoProjectedGradientDescent

        return AutoProjectedGradientDescent(
            self.target.classifier,
            norm=self.norm.art,
            eps=eps,
            eps_step=2 * eps,  # APGD's initial step; it halves it itself when progress stalls
            max_iter=self.params.steps,
            targeted=self.targeted,
            nb_random_init=getattr(self.params, "restarts", 1),
            batch_size=self.target.batch_size,
            loss_type=self.loss_type,
            verbose=False,
        )


def _needs_three_classes(name: str, target) -> None:
    if target.num_classes < 3:
        raise UsageError(f"attack {name!r}: the DLR loss needs at least 3 classes, the model has {target.num_classes}")


@ATTACKS.register("apgd-ce")
class ApgdCe(_Apgd):
    loss_type = "cross_entropy"


@ATTACKS.register("apgd-dlr")
class ApgdDlr(_Apgd):
    loss_type = "difference_logits_ratio"

    def __init__(self, name, norm, params, target):
        _needs_three_classes(name, target)
        super().__init__(name, norm, params, target)


@dataclass(frozen=True)
class ApgdTargetedParams:
    steps: int = option(100, "iterations per target class (AutoAttack uses 100)", INT)
    targets: int = option(9, "target classes: the highest-scoring wrong classes (AutoAttack uses 9)", INT)
    any_iterate: bool = option(True, "broken when any iterate in the ball is misclassified (AutoAttack)", BOOL)


@ATTACKS.register("apgd-t")
class ApgdTargeted(_Apgd):
    """Targeted APGD with ART's DLR loss, once per target class, each run only on the examples that the
    earlier targets left correct (AutoAttack's APGD-T). ART's targeted DLR is -(z_t - z_i) / (z_pi1 - z_pi3),
    z_i the largest logit other than the target's; AutoAttack's is -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2),
    z_y the true class's: the same aim (lift the target above the rest), not the same numbers.
    """

    Params = ApgdTargetedParams
    loss_type = "difference_logits_ratio"
    targeted = True

    def __init__(self, name, norm, params, target):
        _needs_three_classes(name, target)
        super().__init__(name, norm, params, target)

    def run(self, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        attack = self.art_attack(eps)
        ranked = np.argsort(-self.target.classifier.predict(x, batch_size=self.target.batch_size), axis=1)
        wrong = ranked[ranked != y[:, None]].reshape(len(y), -1)  # (n, classes - 1): wrong classes, best first
        x_adv, correct = x.copy(), np.ones(len(y), dtype=bool)
        for k in range(min(self.params.targets, wrong.shape[1])):
            index = np.flatnonzero(correct)
            if not len(index):
                break
            targets = np.eye(self.target.num_classes, dtype=np.float32)[wrong[index, k]]
            with narrowed_starts(index, wrong[index, k], targeted=True):  # rows `index`, each with its own starts
                candidate = attack.generate(x[index], targets)
            broken = self._labels(candidate) != y[index]
            x_adv[index[broken]] = candidate[broken]
            correct[index[broken]] = False
        return x_adv

    def _labels(self, x: np.ndarray) -> np.ndarray:
        return self.target.classifier.predict(x, batch_size=self.target.batch_size).argmax(1)
