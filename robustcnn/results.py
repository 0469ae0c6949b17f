"""The sweep's output format: the contract between `sweep` (writes) and `report` (reads). No torch here.

A sweep output directory holds:

    results.csv        tidy table, one row per (model, attack, eps-or-scale); columns are `COLUMNS` below
    manifest.json      provenance: command, suite, seed, n, versions, git sha, machine, device, timings, and
                       per model {id, path, sha256, dataset, arch, method, threat_model, class_names,
                       training_metrics (the run's per-epoch rows)}
    cells/             one JSON row + one packed per-example correctness array per finished cell (resume state)
    gallery/<model>.npz    a few examples for the report: x, x_adv (k, C, H, W) float32 in [0, 1], y, pred,
                           pred_adv (k,) int64, and 0-d arrays attack (str) and eps (float)
    patches/<model>__<attack>.png    the optimised adversarial patch, when the suite has one
                       (ids in file names pass through `file_stem`)
    report.html, summary.md, checks.json    written by the report

Row kinds: "clean" (no attack; eps 0), "attack" (one attack at one eps or patch scale), "worst-case"
(per model, norm and eps: an example counts as robust only if no attack of that norm broke it at any eps
up to this one - balls nest; the attack column says "worst-case" for Linf and "worst-case-l2" for L2), and
"probe" (a few examples, the first `probe` of the subset, attacked afresh at every eps by each white-box
attack whether clean-correct or not, and their clean row; the checks read them, the headline does not),
and "certified" (a bound entry such as ibp or crown at one eps: the examples whose prediction is proven
correct over the whole eps ball, a lower bound on robust accuracy; never part of the worst case), and
"smoothed" (randomized smoothing at one L2 radius, in the eps column: the images the *smoothed* classifier,
not the model, classifies correctly with a certified radius at least that large; never compared with attacks).
In a cascade suite each attack's rows count what it and every earlier attack of its norm left correct.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EPS_TOLERANCE = 1e-9  # eps are compared with this slack (grids come from fractions such as 1/3 x 0.3)
RESULTS_FILE = "results.csv"
MANIFEST_FILE = "manifest.json"
CHECKS_FILE = "checks.json"
REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.md"

COLUMNS = [
    "model",  # model id: the run directory name, the spec or the given name, unique within the sweep
    "checkpoint_sha256",  # hash of the weights attacked: the run's checkpoint file, else the loaded tensors
    "dataset",  # dataset name
    "arch",  # architecture name, or the spec of a model from elsewhere (e.g. "torchvision:resnet18")
    "train_method",  # standard, pgd, trades, fgsm-rs or n-fgsm; empty for models trained elsewhere
    "preprocessing",  # "in-model" (robustcnn's models normalise inside), else what the sweep applied, e.g. "imagenet"
    "kind",  # clean | attack | worst-case
    "attack",  # entry name in the suite (e.g. "pgd-linf"); "clean", "worst-case" (Linf) or "worst-case-l2"
    "attack_type",  # registry name of the attack (fgsm, pgd, apgd-ce, apgd-dlr, square, cw-l2, deepfool, patch)
    "box",  # white | black | none: black-box attacks use only the model's outputs
    "params",  # the attack's parameters as compact JSON (steps, restarts, step size, ...)
    "norm",  # inf | 2 | "" (patch, clean)
    "eps",  # radius in [0, 1] pixel units (0 for clean; empty for patch rows)
    "scale",  # patch side as a fraction of the image (patch rows only)
    "n",  # examples evaluated
    "n_correct",  # examples still classified correctly under the attack
    "accuracy",  # n_correct / n
    "ci_low",  # Wilson 95% interval of accuracy
    "ci_high",
    "target_success",  # patch only: fraction of examples classified as the patch's target class
    "seconds",  # wall time of the cell
    "suite",  # suite name
    "seed",  # sweep seed
    "cell",  # cache key: hash of model, attack config, eps, data subset, seed and mode
]


@dataclass(frozen=True)
class HeadlineEps:
    """Which eps the headline reports for one model, decided once by the sweep (manifest, per model).

    The report reads it and never guesses: `reference_eps` per norm is the suite's `reference_eps`, else the
    dataset's threat model eps for its norm (its L2 eps for L2); `attack_eps` is, per attack and per worst
    case, the grid eps closest to its norm's reference.
    """

    reference_eps: dict[str, float]  # norm ("inf", "2") -> eps in [0, 1] pixel units
    attack_eps: dict[str, float]  # attack name, or "worst-case" / "worst-case-l2" -> the eps its column reads

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"reference_eps": dict(self.reference_eps), "headline_eps": dict(self.attack_eps)}

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> HeadlineEps | None:
        """From a manifest model entry; None for sweeps made before the sweep decided it."""
        reference, at = entry.get("reference_eps"), entry.get("headline_eps")
        if not isinstance(reference, dict) or not isinstance(at, dict):
            return None
        try:
            return cls({str(k): float(v) for k, v in reference.items()}, {str(k): float(v) for k, v in at.items()})
        except (TypeError, ValueError):
            return None


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion: honest at 0%, 100% and small n, unlike p +- z*se."""
    if n <= 0:
        return (math.nan, math.nan)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


CHANCE_MARGIN = 0.1  # clean accuracy below chance + 10% of the way to 100% is "at chance level"


def chance_level(num_classes: int) -> tuple[float, float]:
    """(chance, the accuracy below which a model counts as at chance: wrong preprocessing or labels, usually)."""
    chance = 1 / num_classes
    return chance, chance + CHANCE_MARGIN * (1 - chance)


def file_stem(name: str) -> str:
    """How a model or attack id becomes a file name in gallery/ and patches/ (ids may hold '/', spaces, '<').

    The sweep writes and the report reads with this one rule; it keeps only letters, digits and "-_.", so
    no id can name a path outside the sweep directory.
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def results_path(out: str | Path) -> Path:
    return Path(out) / RESULTS_FILE
