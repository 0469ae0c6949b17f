"""Two models judged on the same examples: the paired difference in accuracy, its interval and McNemar's exact test.

Paired data carry more information than two accuracies: only the discordant examples (right for one model, wrong
for the other) say which is better, so a 1-point gap on 1,000 images can be decisive when the models agree on the
rest, and noise when they do not. Two separate Wilson intervals ignore that and overlap far too often.

- The test is McNemar's exact (conditional) test: under "equally accurate" each discordant example is a fair coin,
  so p is the two-sided binomial test of b successes in b + c trials (scipy's `binomtest`).
- The interval is Newcombe's hybrid score interval for paired proportions (his method 10, Stat. Med. 1998;17:
  2635-50): the two Wilson intervals, combined with the phi correlation of the pairs. It stays inside [-1, 1], is
  sensible at 0 and 100% and at a handful of discordant pairs, where the Wald interval collapses to a point.
- Several rows of one comparison are a family: `holm` adjusts their p-values (Holm's step-down), so
  "significant" is said of a family at the level asked for, not of each of 40 rows at 5%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robustcnn.results import wilson_interval

Z95 = 1.959964  # the standard normal's 97.5% point: 95% two-sided


@dataclass(frozen=True)
class PairedDifference:
    """new - old on the same n examples; b examples only the old model got right, c only the new one."""

    n: int
    old_correct: int
    new_correct: int
    old_only: int  # b: correct for the old model, wrong for the new one
    new_only: int  # c: wrong for the old model, correct for the new one
    low: float  # 95% interval of the difference in accuracy (fractions)
    high: float
    p_value: float  # McNemar's exact test, two-sided

    @property
    def old_accuracy(self) -> float:
        return self.old_correct / self.n if self.n else math.nan

    @property
    def new_accuracy(self) -> float:
        return self.new_correct / self.n if self.n else math.nan

    @property
    def difference(self) -> float:
        """new - old accuracy, as a fraction (negative: the new model is less accurate)."""
        return (self.new_only - self.old_only) / self.n if self.n else math.nan


def paired_difference(old: np.ndarray, new: np.ndarray) -> PairedDifference:
    """Compares two models' per-example results on the same examples in the same order."""
    old, new = np.asarray(old, dtype=bool), np.asarray(new, dtype=bool)
    if old.shape != new.shape or old.ndim != 1:
        raise ValueError(f"paired results need two flag vectors of one length, got {old.shape} and {new.shape}")
    both = int(np.sum(old & new))
    b, c = int(np.sum(old & ~new)), int(np.sum(~old & new))
    neither = len(old) - both - b - c
    low, high = newcombe_interval(both, b, c, neither)
    return PairedDifference(len(old), both + b, both + c, b, c, low, high, mcnemar_exact(b, c))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts; 1 when there are none (nothing disagrees)."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(b, b + c, 0.5).pvalue)


def newcombe_interval(both: int, b: int, c: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's method 10 for new - old, where old is right on both + b examples and new on both + c."""
    n = both + b + c + neither
    if n == 0:
        return (math.nan, math.nan)
    p_old, p_new = (both + b) / n, (both + c) / n
    low_old, high_old = wilson_interval(both + b, n, z)
    low_new, high_new = wilson_interval(both + c, n, z)
    phi = _phi(both, b, c, neither)
    difference = p_new - p_old
    below = math.sqrt(max(0.0, _combined(p_new - low_new, high_old - p_old, phi)))
    above = math.sqrt(max(0.0, _combined(high_new - p_new, p_old - low_old, phi)))
    return (max(-1.0, difference - below), min(1.0, difference + above))


def _combined(one: float, other: float, phi: float) -> float:
    return one * one - 2 * phi * one * other + other * other


def _phi(both: int, b: int, c: int, neither: int) -> float:
    """The correlation of the two models' results over the pairs; 0 where a margin is empty (Newcombe's rule)."""
    denominator = (both + b) * (c + neither) * (both + c) * (b + neither)
    return (both * neither - b * c) / math.sqrt(denominator) if denominator else 0.0


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values of one family of comparisons: the k-th smallest times (m - k + 1), made monotone.
    Written out (tested against statsmodels' `multipletests`), because that runs a full garbage collection on every
    call: 0.3 s each, minutes for a report of many pairs."""
    m = len(p_values)
    adjusted, running = [0.0] * m, 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
