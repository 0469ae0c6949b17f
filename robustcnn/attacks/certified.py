"""ibp, crown: certified lower bounds by bound propagation (robustcnn.certify.bounds), as suite entries.

A certified row at eps counts the images whose prediction is proven to be the true label at every input of
the eps ball; no attack can go below it, so it brackets the robust accuracy with the attacks' rows.
`crown` first tries the cheap interval bounds and runs its linear relaxation only where they fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robustcnn.attacks.base import ATTACKS, CertifiedBound
from robustcnn.certify.bounds import ALPHA_STEPS
from robustcnn.config import COUNT, INT, option
from robustcnn.console import progress

IBP_BATCH = 256  # images per interval pass: about two forward passes' memory


@dataclass(frozen=True)
class IbpParams:
    batch: int = option(IBP_BATCH, "images bounded at once", INT)


@dataclass(frozen=True)
class CrownParams:
    batch: int = option(2, "images bounded at once (memory: the input size times every layer's size, per image)", INT)
    alpha_steps: int = option(ALPHA_STEPS, "Adam steps on the ReLU slopes of the final bound (0: CROWN's own)", COUNT)


class _Propagated(CertifiedBound):
    method: str
    box = "white"

    def check_model(self) -> None:
        from robustcnn.certify.layers import check_model

        check_model(self.target.model)

    def certify(self, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        from robustcnn.certify.bounds import certified

        proven = np.zeros(len(x), dtype=bool)
        for method in self.methods():
            todo = np.flatnonzero(~proven)
            batches = range(0, len(todo), self.batch(method))
            for start in progress(batches, desc=f"{self.name} ({method}) eps={eps:.4g}", unit="batch"):
                index = todo[start : start + self.batch(method)]
                xb = torch.from_numpy(x[index]).to(self.target.device)
                yb = torch.from_numpy(y[index]).to(self.target.device)
                flags = certified(self.target.model, xb, yb, eps, self.norm, method, self.target.num_classes,
                                  **self.options(method))  # fmt: skip
                proven[index] = flags.cpu().numpy()
        return proven

    def methods(self) -> tuple[str, ...]:
        return (self.method,)

    def options(self, method: str) -> dict:
        return {}

    def batch(self, method: str) -> int:
        return self.params.batch


@ATTACKS.register("ibp")
class Ibp(_Propagated):
    """Interval bound propagation (Gowal et al. 2018): about two forward passes per image."""

    Params = IbpParams
    method = "ibp"


@ATTACKS.register("crown")
class Crown(_Propagated):
    """CROWN (Zhang et al. 2018) with optimised slopes (alpha-CROWN, Xu et al. 2021), on the images interval
    bounds could not certify: robustcnn.certify.bounds says how. Never looser than ibp; its cost grows with the
    input size times the layer sizes."""

    Params = CrownParams
    method = "crown"

    def methods(self) -> tuple[str, ...]:
        return ("ibp", "crown")

    def batch(self, method: str) -> int:
        return IBP_BATCH if method == "ibp" else self.params.batch

    def options(self, method: str) -> dict:
        return {} if method == "ibp" else {"alpha_steps": self.params.alpha_steps}
