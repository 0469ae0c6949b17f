"""Attack suites: TOML files that list attacks, their parameters and their eps (or patch-scale) grids.

    description = "what it is for and what it costs"
    n = 500                           # test images, unless --n says otherwise
    cascade = false                   # true: each attack only on what every earlier one (same norm) left;
                                      # black-box attacks (Square) then run after all white-box ones
    draws = 1                         # a model random at test time is right where a majority of this many passes are
    reference_eps = "8/255"           # the headline's eps: one Linf number, or {inf = "8/255", 2 = 0.5}
    [[attack]]
    name = "pgd-linf"                 # unique within the suite; rows and --fail-under use it
    type = "pgd"                      # an attack of robustcnn.attacks
    norm = "inf"                      # inf or 2
    eps = [0.1, 0.2, 0.3]             # absolute radii in [0, 1] pixel units, or instead:
    # eps_fraction = [0.5, 1.0]       # multiples of the dataset's reference eps (MNIST Linf 0.3, CIFAR 8/255)
    steps = 40                        # the attack's own parameters
    eot = 20                          # gradient attacks: adapted to a random model, masked gradients (adaptive.py)
    bpda = "auto"

Suites are found by name in the checkout's attacks/ folder or inside the installed package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomllib

from robustcnn.attacks import ATTACKS
from robustcnn.data import DatasetInfo
from robustcnn.errors import UsageError
from robustcnn.fileio import suite_folders
from robustcnn.results import Adaptation
from robustcnn.sweep.kinds import KINDS, Kind
from robustcnn.threat import Norm, check_eps, parse_eps

SUITE_KEYS = ("description", "n", "reference_eps", "cascade", "draws", "attack")
MAX_SUITE_BYTES = 1 << 20  # shipped suites are ~1 KB; the text is copied into manifest.json and the report
ENTRY_KEYS = ("name", "type", "norm", "eps", "eps_fraction", "scales")

# What a suite may ask. Each cap is far above any published evaluation, and low enough that a slip
# (steps = 1000000) is one line at once instead of a sweep that runs for days.
MAX_ATTACKS = 100  # [[attack]] entries per suite; the shipped suites have 2-4
MAX_GRID = 100  # values in one eps, eps_fraction or scales list (one cell each); the shipped suites use <= 7
CAPS = {  # attack parameter -> its largest allowed value, whichever attack has it
    "steps": 10_000,  # gradient or optimisation steps; AutoAttack uses 100, long PGD evaluations 1000
    "iterations": 10_000,  # patch optimisation steps; the shipped suites use 40-200
    "restarts": 100,  # random starts, each a whole attack; AutoAttack's strongest setting uses 5
    "queries": 100_000,  # Square's model queries per example; AutoAttack uses 5000
    "binary_search_steps": 100,  # C&W's searches over c, each `steps` long; Carlini & Wagner use 9
    "alpha_steps": 10_000,  # CROWN's optimisation steps on the ReLU slopes, per bound
    "samples": 1_000_000,  # smoothing's noise samples per image; Cohen et al. use 100000
    "selection": 100_000,  # smoothing's noise samples that choose the class; Cohen et al. use 100
    "train_images": 100_000,  # images the patch is optimised on, held in memory; CIFAR-10 has 50000
    "batch": 100_000,  # images per forward pass of a bound or of smoothing: memory, not time
    "memory_mb": 1 << 20,  # MiB crown's linear bounds may hold per batch: a TiB
    "eot": 1_000,  # forward and backward passes per gradient of a random model; AutoAttack's rand version uses 20
}
MAX_DRAWS = 1_000  # passes that judge one prediction of a random model


@dataclass(frozen=True)
class AttackSpec:
    name: str  # unique within the suite
    type: str  # registry name
    norm: Norm | None  # None for the patch
    eps: tuple[float, ...] | None  # absolute radii
    eps_fraction: tuple[float, ...] | None  # multiples of the dataset's reference eps
    scales: tuple[float, ...] | None  # patch side / image side, patch only
    params: Any  # the attack's Params dataclass

    @property
    def attack_class(self):
        return ATTACKS.get(self.type)

    @property
    def kind(self) -> Kind:
        """How the sweep runs this attack: the `Kind` its class names (robustcnn/sweep/kinds)."""
        return KINDS.get(self.attack_class.kind)

    def grid(self, info: DatasetInfo) -> tuple[float, ...]:
        """Sorted absolute grid for one dataset: eps for attacks, scales for the patch."""
        if not self.kind.has_eps:
            return tuple(sorted(self.scales))
        if self.eps is not None:
            return tuple(sorted(self.eps))
        reference = info.reference_eps(self.norm)
        grid = tuple(sorted(round(f * reference, 10) for f in self.eps_fraction))
        for eps in grid:
            check_eps(
                eps, self.norm, what=f"attack {self.name!r}: eps_fraction x {info.name} reference {reference:g} ="
            )
        return grid

    def adapted(self, target) -> tuple[AttackSpec, tuple[Adaptation, ...]]:
        """This attack as it runs on `target`'s model (its params adapted to what the model checks found, e.g. EOT
        on a random model), and each change with its reason."""
        params, adaptations = self.attack_class.adapt(self.name, self.params, target)
        return (self if params is self.params else replace(self, params=params)), adaptations

    def check_data(self, info: DatasetInfo) -> None:
        """Values only the data can judge (a patch's target class and size), checked before anything is written."""
        self.kind.check_data(self, info)

    def describe(self) -> dict[str, Any]:
        """What determines this attack's results (its cache identity), as plain JSON."""
        return {
            "type": self.type,
            "norm": self.norm.value if self.norm else None,
            "params": self.attack_class.describe_params(self.params),
        }

    def params_json(self) -> str:
        return json.dumps(self.attack_class.describe_params(self.params), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    n: int | None  # default number of test images
    reference_eps: dict[Norm, float]  # the eps the headline reports, per norm; absent: the dataset's
    attacks: tuple[AttackSpec, ...]
    text: str  # the file as written, kept in the manifest
    cascade: bool = False  # each attack runs only on the examples every earlier attack of its norm left correct
    draws: int = 1  # passes that judge a prediction of a model random at test time (correct in a strict majority)

    def reference(self, norm: Norm, info: DatasetInfo) -> float:
        """The headline's eps for `norm` on this data: the suite's, else the dataset's for that norm."""
        return self.reference_eps.get(norm, info.reference_eps(norm))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "description": self.description,
            "n": self.n,
            "reference_eps": {norm.value: eps for norm, eps in self.reference_eps.items()},
            "cascade": self.cascade,
            "draws": self.draws,
            "text": self.text,
        }


def suite_names() -> list[str]:
    return sorted({p.stem for folder in suite_folders() for p in folder.glob("*.toml")})


def find_suite(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix == ".toml" or "/" in text or path.is_file():
        if not path.exists():
            raise UsageError(f"suite file {text!r} does not exist")
        if not path.is_file():
            raise UsageError(f"suite file {text!r} is not a regular file; give a .toml file")
        return path
    for folder in suite_folders():
        if (folder / f"{text}.toml").is_file():
            return folder / f"{text}.toml"
    raise UsageError(f"unknown suite {text!r}; choose one of: {', '.join(suite_names())}, or a path to a .toml file")


def load_suite(name_or_path: str | Path) -> Suite:
    path = find_suite(name_or_path)
    size = path.stat().st_size
    if size > MAX_SUITE_BYTES:
        raise UsageError(f"{path}: {size} bytes is too large for a suite; the limit is {MAX_SUITE_BYTES} bytes")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: not valid TOML ({error})") from None
    except RecursionError:  # tomllib recurses once per nesting level: [[[[...]]]] thousands deep
        raise UsageError(f"{path}: not valid TOML (arrays or tables nested too deeply)") from None
    return parse_suite(data, path, text)


def parse_suite(data: dict[str, Any], path: Path, text: str = "") -> Suite:
    where = f"{path}: "
    _reject_unknown(data, SUITE_KEYS, where)
    entries = data.get("attack")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f"{where}needs at least one [[attack]] table")
    if len(entries) > MAX_ATTACKS:
        raise UsageError(f"{where}{len(entries)} [[attack]] tables is above the cap of {MAX_ATTACKS}; split the suite")
    attacks = tuple(_parse_entry(entry, i + 1, where) for i, entry in enumerate(entries))
    names = [a.name for a in attacks]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UsageError(f"{where}attack name {duplicate!r} is used twice; names must be unique")
    n = data.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0):
        raise UsageError(f"{where}n = {n!r} is not allowed; it must be a whole number > 0")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise UsageError(f"{where}description must be a string")
    cascade = data.get("cascade", False)
    if not isinstance(cascade, bool):
        raise UsageError(f"{where}cascade = {cascade!r} is not allowed; it must be true or false")
    if cascade:
        attacks = by_cost(attacks)
    reference = _reference_eps(data.get("reference_eps"), where)
    draws = data.get("draws", 1)
    if not isinstance(draws, int) or isinstance(draws, bool) or not 1 <= draws <= MAX_DRAWS:
        raise UsageError(f"{where}draws = {draws!r} is not allowed; it must be a whole number from 1 to {MAX_DRAWS}")
    return Suite(path.stem, path, description, n, reference, attacks, text, cascade, draws)


def by_cost(attacks: tuple[AttackSpec, ...]) -> tuple[AttackSpec, ...]:
    """A cascade's order: the white-box attacks first, in the file's order, then the black-box ones (Square), which
    cost thousands of queries per example, so they attack only what every gradient attack left."""
    return tuple(sorted(attacks, key=lambda spec: spec.attack_class.box == "black"))


def _reference_eps(value: Any, where: str) -> dict[Norm, float]:
    """One number (the Linf eps) or a table by norm, {inf = "8/255", 2 = 0.5}."""
    if value is None:
        return {}
    table = value if isinstance(value, dict) else {"inf": value}
    where = f"{where}reference_eps"
    reference = {}
    for key, eps in table.items():
        try:
            norm = Norm.parse(key)
        except UsageError as error:
            raise UsageError(f"{where}: {error}") from None
        reference[norm] = check_eps(parse_eps(eps, where), norm, where)
    return reference


def _reject_unknown(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise UsageError(f"{where}unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")


def _parse_entry(entry: dict[str, Any], number: int, where: str) -> AttackSpec:
    label = entry.get("name", entry.get("type", "?"))
    where = f"{where}attack #{number} ({label!r}): "
    if "type" not in entry:
        raise UsageError(f"{where}missing field 'type'; choose one of: {', '.join(ATTACKS.names())}")
    try:
        cls = ATTACKS.get(str(entry["type"]))
    except UsageError as error:
        raise UsageError(f"{where}{error}") from None
    if "name" not in entry or not isinstance(entry["name"], str) or not entry["name"].strip():
        raise UsageError(f"{where}missing field 'name' (a short unique label such as 'pgd-linf')")
    params = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    try:
        parsed = cls.parse_params(params, where)
    except UsageError as error:
        allowed = ", ".join(ENTRY_KEYS + tuple(cls.Params.__dataclass_fields__))
        raise UsageError(
            f"{error}; allowed keys: {allowed}" if "unknown option" in str(error) else str(error)
        ) from None
    _check_caps(parsed, where)
    if not KINDS.get(cls.kind).has_eps:
        return _patch_entry(entry, cls, parsed, where)
    if "norm" not in entry:
        raise UsageError(f"{where}missing field 'norm'; choose one of: inf, 2")
    try:
        norm = Norm.parse(entry["norm"])
    except UsageError as error:
        raise UsageError(f"{where}{error}") from None
    cls.check_norm(norm, where)
    if "scales" in entry:
        raise UsageError(f"{where}'scales' is only for the patch attack; use 'eps' or 'eps_fraction'")
    has_eps, has_fraction = "eps" in entry, "eps_fraction" in entry
    if has_eps == has_fraction:
        raise UsageError(f"{where}give exactly one of 'eps' (absolute) or 'eps_fraction' (of the dataset's eps)")
    if has_eps:
        grid = _numbers(entry["eps"], "eps", where)
        for eps in grid:
            check_eps(eps, norm, f"{where}eps")
        return AttackSpec(entry["name"], entry["type"], norm, grid, None, None, parsed)
    fractions = _numbers(entry["eps_fraction"], "eps_fraction", where)
    return AttackSpec(entry["name"], entry["type"], norm, None, fractions, None, parsed)


def _patch_entry(entry: dict[str, Any], cls, parsed: Any, where: str) -> AttackSpec:
    for key in ("norm", "eps", "eps_fraction"):
        if key in entry:
            raise UsageError(f"{where}{key!r} does not apply to the patch attack; give 'scales'")
    if "scales" not in entry:
        raise UsageError(f"{where}missing field 'scales' (patch side as a fraction of the image, e.g. [0.1, 0.2])")
    scales = _numbers(entry["scales"], "scales", where)
    bad = next((s for s in scales if not 0 < s <= 1), None)
    if bad is not None:
        raise UsageError(f"{where}scale {bad!r} is not allowed; scales must lie in (0, 1]")
    return AttackSpec(entry["name"], entry["type"], None, None, None, scales, parsed)


def _check_caps(params: Any, where: str) -> None:
    for name, cap in CAPS.items():
        value = getattr(params, name, None)
        if value is not None and value > cap:
            raise UsageError(f"{where}{name} = {value} is above the cap of {cap}; lower it")


def _numbers(value: Any, key: str, where: str) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UsageError(f"{where}{key!r} is empty; give at least one value")
    if len(values) > MAX_GRID:
        raise UsageError(f"{where}{key!r} lists {len(values)} values, above the cap of {MAX_GRID}; give fewer")
    out = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float, str)):
            raise UsageError(f"{where}{key} value {item!r} is not a number")
        number = parse_eps(item, f"{where}{key} value")
        if number < 0 or number != number:
            raise UsageError(f"{where}{key} value {item!r} is not allowed; it must be >= 0")
        out.append(number)
    if len(set(out)) != len(out):
        raise UsageError(f"{where}{key} lists a value twice")
    return tuple(out)
