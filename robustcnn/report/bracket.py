"""The bracket: certified accuracy (a lower bound on robust accuracy) beside the worst attack (an upper bound).

An attack that leaves an example correct has only failed to find an adversarial example; a certificate
proves there is none. So at every eps the true robust accuracy lies between the best certified accuracy
and the lowest attacked one, and the gap between them is how far the evaluation can be trusted.
"""

from __future__ import annotations

import pandas as pd

from robustcnn.results import EPS_TOLERANCE, RowKind

COLUMNS = ["model", "norm", "eps", "certified", "certified_by", "attacked", "attacked_by", "attacked_eps", "gap"]


def bracket(results: pd.DataFrame) -> pd.DataFrame:
    """Per model, norm and certified eps: the best certified accuracy and the lowest attacked accuracy at that
    eps or below (a smaller ball's attack still bounds the larger ball's robust accuracy from above)."""
    proofs = results[results["kind"] == RowKind.CERTIFIED.value]
    attacked = results[
        results["kind"].isin((RowKind.ATTACK.value, RowKind.WORST_CASE.value)) & ~results["is_patch"].astype(bool)
    ]
    rows = []
    for (model, norm, eps), group in proofs.groupby(["model", "norm", "eps"], sort=False):
        best = group.loc[group["accuracy"].idxmax()]
        mine = attacked[(attacked["model"] == model) & (attacked["norm"] == norm)]
        mine = mine[mine["eps"] <= eps + EPS_TOLERANCE]
        if mine.empty:
            continue
        upper = mine.sort_values(["accuracy", "eps"], ascending=[True, False]).iloc[0]  # ties: the nearest eps
        rows.append(
            {
                "model": model,
                "norm": norm,
                "eps": float(eps),
                "certified": float(best["accuracy"]),
                "certified_by": best["attack"],
                "attacked": float(upper["accuracy"]),
                "attacked_by": upper["attack"],
                "attacked_eps": float(upper["eps"]),
                "gap": float(upper["accuracy"] - best["accuracy"]),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)
