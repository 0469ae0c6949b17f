"""apgd-ce, apgd-dlr: Croce & Hein (2020), step-size-free PGD, the white-box half of AutoAttack
(ART `AutoProjectedGradientDescent`). DLR is invariant to the logits' scale, which defeats some
gradient masking that fools cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustcnn.attacks.base import ATTACKS, BoundedAttack
from robustcnn.config import INT, option
from robustcnn.errors import UsageError


@dataclass(frozen=True)
class ApgdParams:
    steps: int = option(100, "iterations (AutoAttack uses 100)", INT)
    restarts: int = option(1, "random starts", INT)


class _Apgd(BoundedAttack):
    Params = ApgdParams
    loss_type = "cross_entropy"

    def build(self, eps):
        from art.attacks.evasion import AutoProjectedGradientDescent

        return AutoProjectedGradientDescent(
            self.target.classifier,
            norm=self.norm.art,
            eps=eps,
            eps_step=2 * eps,  # APGD's initial step; it halves it itself when progress stalls
            max_iter=self.params.steps,
            targeted=False,
            nb_random_init=self.params.restarts,
            batch_size=self.target.batch_size,
            loss_type=self.loss_type,
            verbose=False,
        )


@ATTACKS.register("apgd-ce")
class ApgdCe(_Apgd):
    loss_type = "cross_entropy"


@ATTACKS.register("apgd-dlr")
class ApgdDlr(_Apgd):
    loss_type = "difference_logits_ratio"

    def __init__(self, name, norm, params, target):
        if target.num_classes < 3:
            raise UsageError(
                f"attack {name!r}: the DLR loss needs at least 3 classes, the model has {target.num_classes}"
            )
        super().__init__(name, norm, params, target)
