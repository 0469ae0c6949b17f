"""fgsm: Goodfellow et al. (2015), one signed-gradient step of size eps (ART `FastGradientMethod`).

The weakest white-box attack here; it is in every suite as the single-step reference that iterative
attacks must beat (a sanity check).
"""

from __future__ import annotations

from robustcnn.art_setup import import_art
from robustcnn.attacks.base import ATTACKS, BoundedAttack


@ATTACKS.register("fgsm")
class Fgsm(BoundedAttack):
    def build(self, eps):
        import_art()
        from art.attacks.evasion import FastGradientMethod

        return FastGradientMethod(
            self.target.classifier,
            norm=self.norm.art,
            eps=eps,
            eps_step=eps,
            targeted=False,
            num_random_init=0,
            batch_size=self.target.batch_size,
            minimal=False,
        )
