"""apgd-ce, apgd-dlr, apgd-t: Croce & Hein (2020), step-size-free PGD, the white-box half of AutoAttack
(ART `AutoProjectedGradientDescent`, its iterations done lean: attacks/lean_apgd.py, ART's results bit for bit).
DLR is invariant to the logits' scale, which defeats some gradient masking that fools cross-entropy. Every iterate
counts (AutoAttack's rule): an example is broken when any point APGD evaluated inside the ball is misclassified,
not only the one ART returns; the lean loop checks each point as it evaluates it and stops attacking an example at
its first misclassified point (where EOT or BPDA wrap ART's gradient, ART's own loop runs, under the forward hook).

DLR needs 3 classes (ART's form, -(z_y - z_i) / (z_pi1 - z_pi3)): on a model with fewer, apgd-dlr and apgd-t use
cross-entropy instead, said in the manifest and in the rows' params ("loss": "ce").

Batch-independent as the sweep runs it: random starts are drawn per example (`per_example_starts`), and ART's
step sizes are per image. One exception in ART: a batch stops early when every loss in it is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from robustcnn.attacks.adaptive import AdaptiveGradients, AdaptiveParams
from robustcnn.attacks.art import classifier_class, narrowed_starts
from robustcnn.attacks.base import ATTACKS, BoundedAttack
from robustcnn.attacks.lean_apgd import apgd_class
from robustcnn.config import BOOL, INT, option
from robustcnn.results import Adaptation, Technique

LOSSES = {"ce": "cross_entropy", "dlr": "difference_logits_ratio"}  # the suite's name -> ART's loss_type
DLR_CLASSES = 3  # ART's DLR divides by z_pi1 - z_pi3 (AutoAttack's targeted DLR needs 4: z_pi4 too)


def parse_loss(value) -> str:
    if value in LOSSES:
        return value
    raise ValueError("choose one of: dlr, ce")


@dataclass(frozen=True)
class ApgdParams(AdaptiveParams):
    steps: int = option(100, "iterations (AutoAttack uses 100)", INT)
    restarts: int = option(1, "random starts (ART always starts at a random point of the ball)", INT)
    any_iterate: bool = option(True, "broken when any iterate in the ball is misclassified (AutoAttack)", BOOL)


class _Apgd(AdaptiveGradients, BoundedAttack):
    Params = ApgdParams
    targeted = False

    @property
    def loss_type(self) -> str:
        """ART's loss: the suite's, as adapted to the model (cross-entropy for DLR on too few classes: `_Dlr.adapt`)."""
        return LOSSES[getattr(self.adapt(self.name, self.params, self.target)[0], "loss", "ce")]

    def build(self, eps):
        attack = apgd_class()(
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
        # ART wraps the model in a plain PyTorchClassifier of its own (for its loss); robustcnn's subclass, the same
        # object otherwise, reports each prediction, which tells per-example starts which rows ART restarts from
        # (`per_example_starts`): examples misclassified at the start, as in a probe, or a restart's survivors.
        attack._estimator.__class__ = classifier_class()
        return attack

    def watches_iterates(self, eps: float) -> bool:
        return getattr(self.art_attack(eps), "is_lean", bool)()  # ART's own class (tests) has no lean loop

    def run(self, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        return self.art_attack(eps).generate(x, y, true_labels=self._watched(y))

    def _watched(self, y: np.ndarray) -> np.ndarray | None:
        """The true labels the lean loop checks every iterate against (AutoAttack's rule), or None."""
        return y if self.records_iterates() else None


@dataclass(frozen=True)
class ApgdDlrParams(ApgdParams):
    loss: str = option("dlr", "dlr, or ce (what a model with fewer than 3 classes gets instead)", parse_loss)


class _Dlr(_Apgd):
    """APGD with the DLR loss, which needs 3 classes: a model with fewer gets cross-entropy, said in the manifest."""

    @classmethod
    def adapt(cls, name, params, target):
        params, done = super().adapt(name, params, target)
        if params.loss != "dlr" or target.num_classes >= DLR_CLASSES:
            return params, done
        reason = f"the DLR loss needs at least {DLR_CLASSES} classes; the model has {target.num_classes}"
        return replace(params, loss="ce"), (*done, Adaptation(name, Technique.LOSS, "ce", reason))


@ATTACKS.register("apgd-ce")
class ApgdCe(_Apgd):
    pass


@ATTACKS.register("apgd-dlr")
class ApgdDlr(_Dlr):
    Params = ApgdDlrParams


@dataclass(frozen=True)
class ApgdTargetedParams(AdaptiveParams):
    steps: int = option(100, "iterations per target class (AutoAttack uses 100)", INT)
    targets: int = option(9, "target classes: the highest-scoring wrong classes (AutoAttack uses 9)", INT)
    any_iterate: bool = option(True, "broken when any iterate in the ball is misclassified (AutoAttack)", BOOL)
    loss: str = option("dlr", "dlr, or ce (what a model with fewer than 3 classes gets instead)", parse_loss)


@ATTACKS.register("apgd-t")
class ApgdTargeted(_Dlr):
    """Targeted APGD with ART's DLR loss, once per target class, each run only on the examples that the
    earlier targets left correct (AutoAttack's APGD-T). ART's targeted DLR is -(z_t - z_i) / (z_pi1 - z_pi3),
    z_i the largest logit other than the target's; AutoAttack's is -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2),
    z_y the true class's: the same aim (lift the target above the rest), not the same numbers.
    """

    Params = ApgdTargetedParams
    targeted = True

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
                candidate = attack.generate(x[index], targets, true_labels=self._watched(y[index]))
            broken = self._broken(candidate, y[index])
            x_adv[index[broken]] = candidate[broken]
            correct[index[broken]] = False
        return x_adv

    def _broken(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which candidates are adversarial: by ART's prediction, or a random model's majority of passes."""
        if self.target.draws > 1:
            return ~self.target.correct(x, y)
        return self.target.classifier.predict(x, batch_size=self.target.batch_size).argmax(1) != y
