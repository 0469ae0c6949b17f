"""ibp, crown: certified lower bounds by bound propagation (robustcnn.certify.bounds), as suite entries.

A certified row at eps counts the images whose prediction is proven to be the true label at every input of
the eps ball; no attack can go below it, so it brackets the robust accuracy with the attacks' rows.
`crown` first tries the cheap interval bounds and runs its linear relaxation only where they fail. Any model
torch.export can trace is bounded (residual networks, ONNX and .pt2 files); one with an operator that cannot be
bounded is refused by name before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from robustcnn.attacks.base import ATTACKS, CertifiedBound
from robustcnn.certify import ALPHA_STEPS
from robustcnn.config import COUNT, INT, option
from robustcnn.console import progress, say

IBP_BATCH = 256  # images per interval pass: about two forward passes' memory


@dataclass(frozen=True)
class IbpParams:
    batch: int = option(IBP_BATCH, "images bounded at once", INT)


@dataclass(frozen=True)
class CrownParams:
    batch: int = option(2, "images bounded at once (memory: the input size times every layer's size, per image)", INT)
    alpha_steps: int = option(ALPHA_STEPS, "Adam steps on the ReLU slopes of the final bound (0: CROWN's own)", COUNT)
    memory_mb: int = option(
        4096, "MiB one batch's linear bounds may hold; a layer they do not fit keeps its interval bounds", INT
    )


class _Propagated(CertifiedBound):
    method: str
    box = "white"

    def check_model(self) -> None:
        from robustcnn.certify.graph import check_model

        check_model(self.target.model, self.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.target.classifier.input_shape)

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
        return {} if method == "ibp" else {"alpha_steps": self.params.alpha_steps, "memory": self.memory}

    @property
    def memory(self) -> int:
        """Bytes per image: the plan is the same for a full batch and for the last, smaller one."""
        return max(1, self.params.memory_mb * 2**20 // self.params.batch)

    def check_model(self) -> None:
        super().check_model()
        if self.intervals_only[0]:
            count, total = self.intervals_only
            say(
                f"note: {self.name}: {count} of {total} ReLU / max-pooling inputs keep their interval bounds: "
                f"neither their linear bounds (memory_mb={self.params.memory_mb} for batch={self.params.batch}) nor "
                "back-substitution (layers of up to 1024 neurons) fit; its certified rows say so in params"
            )

    @cached_property
    def intervals_only(self) -> tuple[int, int]:
        """(relaxed values bounded by intervals alone, all relaxed values) under this budget."""
        from robustcnn.certify.bounds import crown_plan

        _, plan = crown_plan(self.target.model, self.shape, self.memory)
        return len(plan.intervals_only()), len(plan.relaxed)

    def cell_extra(self) -> dict[str, np.ndarray]:
        return {"intervals_only": np.array(self.intervals_only, dtype=np.float32)}
