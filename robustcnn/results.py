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
                       (ids in file names pass through `file_stem`: `gallery_file`, `patch_file`)
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

Text cells of results.csv that a spreadsheet would run as a formula (starting with = + - @, a tab or a
carriage return: OWASP's list) are written with a leading ' (`csv_text`); `csv_value` reads them back.
Numbers are never touched, so -0.5 stays a number.
"""

from __future__ import annotations

import hashlib
import math
import re
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


_PLAIN_STEM = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # an id kept as its own file name
_HASH_END = re.compile(r"-[0-9a-f]{8}$")  # what `file_stem` appends to any other id


def file_stem(name: str) -> str:
    """How a model or attack id becomes part of a file name in gallery/ and patches/ (ids may hold '/', spaces, '<').

    An id that is already a plain file name (lowercase ASCII letters, digits and "._-", starting with a letter
    or digit, no "__", at most 64 characters) is kept. Any other id keeps its safe characters and gets 8 hex
    digits of its hash: 'a/b' -> 'a_b-<hash>' while 'a_b' stays 'a_b', and 'Std' never meets 'std' on a disk
    that ignores case. So two ids never share a file, and no id can name a path outside the sweep directory.
    """
    if _PLAIN_STEM.fullmatch(name) and "__" not in name and not _HASH_END.search(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    safe = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9._-]+", "_", name)).strip("._-")[:48].rstrip("._-")
    return f"{safe}-{digest}" if safe else f"id-{digest}"


def gallery_file(model: str) -> str:
    """The gallery of a model, relative to the sweep directory (the sweep writes it, the report reads it)."""
    return f"gallery/{file_stem(model)}.npz"


def patch_file(model: str, attack: str) -> str:
    """The optimised patch of a model's patch attack, relative to the sweep directory. Neither stem holds "__"
    nor does an attack's start with "_", so the pair is read back from the name in one way only."""
    return f"patches/{file_stem(model)}__{file_stem(attack)}.png"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet run a cell (OWASP CSV injection)


def csv_text(value: str) -> str:
    """A text cell as results.csv holds it: one a spreadsheet would run gets a leading ' (shown as text). A value
    already starting with ' before such a character gets one more, so `csv_value` gives back exactly `value`."""
    return "'" + value if value.lstrip("'").startswith(FORMULA_START) else value


def csv_value(text: str) -> str:
    """The value of a text cell `csv_text` wrote."""
    return text[1:] if text.startswith("'") and text.lstrip("'").startswith(FORMULA_START) else text


def results_csv(frame) -> str:
    """results.csv's text for a results DataFrame: text cells through `csv_text`, number columns as they are."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype.kind not in "biuf":
            frame[column] = frame[column].map(lambda v: csv_text(v) if isinstance(v, str) else v)
    return frame.to_csv(index=False)


def results_path(out: str | Path) -> Path:
    return Path(out) / RESULTS_FILE
