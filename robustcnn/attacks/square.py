"""square: Andriushchenko et al. (2020), a score-based black-box attack (ART `SquareAttack`).

It uses only the model's outputs, so when it beats the white-box attacks the gradients are lying
(gradient masking). Its cost is in queries: one forward pass of the examples still correct per query
(attacks/lean_square.py: ART's numbers from the same seed, without ART's two other passes per query).

Not batch-independent: ART draws one square (position and size) per iteration for the whole batch, from numpy's
global generator, so an example's result depends on the other examples of its batch and on the batch size (a
batch redone smaller after running out of GPU memory gives other, equally valid, numbers). Making it per example
would mean rewriting ART's attack; its results are reproducible for a given seed and batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustcnn.attacks.base import ATTACKS, BoundedAttack
from robustcnn.attacks.lean_square import square_class
from robustcnn.config import FLOAT, INT, option


@dataclass(frozen=True)
class SquareParams:
    queries: int = option(1000, "model queries per example (AutoAttack uses 5000)", INT)
    restarts: int = option(1, "independent restarts", INT)
    p_init: float = option(0.8, "initial fraction of pixels changed per square", FLOAT)


@ATTACKS.register("square")
class Square(BoundedAttack):
    box = "black"
    Params = SquareParams

    def build(self, eps):
        p = self.params
        return square_class()(
            self.target.classifier,
            norm=self.norm.art,
            max_iter=p.queries,
            eps=eps,
            p_init=p.p_init,
            nb_restarts=p.restarts,
            batch_size=self.target.batch_size,
            verbose=False,
        )
