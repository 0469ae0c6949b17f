"""Did an attack adapted to it meet each defence the sweep's model checks found? One rule, read by the `adaptive`
check, the headline's "not adaptive" marker and the report's Adaptive evaluation section.

A model random at test time (model check `deterministic` fails) makes each gradient step chase one random draw:
an attack must average its gradient over many passes (EOT, Expectation over Transformation). A model whose input
gradients are masked (`gradients` fails) gives gradient attacks nothing to follow: an attack must pass the gradient
straight through what masks it (BPDA, Athalye et al. 2018). Without them every gradient attack is weak against the
model, and its robust accuracy is an upper bound that an adapted attack may lower. The sweep records what it
adapted, per attack, in the manifest (`ModelEntry.adaptations`); only attacks with rows for the model count, so a
shard that has not run an attack yet does not vouch for it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from robustcnn.results import Adaptation, Check, ModelEntry, RowKind, Status, Technique

RANDOMNESS, MASKING = "randomness", "masked gradients"  # the defences, as the report names them
FOUND_BY = {RANDOMNESS: "deterministic", MASKING: "gradients"}  # the model check whose failure finds each
MEETS = {RANDOMNESS: Technique.EOT, MASKING: Technique.BPDA}  # the technique that meets each
BPDA_CHECK = "gradients-bpda"  # model check: did passing rounding ops' gradient through bring the gradients back?
ROUNDING = ("rounding", "auto")  # BPDA settings that reach only rounding ops; any other setting names a module
MIN_EOT_PASSES = 2  # EOT over one pass averages nothing
NOT_ADAPTIVE = "not adaptive"  # the headline's marker beside a model with a defence no adapted attack met
TO_DO = "run --suite adaptive, or add eot = K / bpda = ... to the suite's gradient attacks"


@dataclass(frozen=True)
class Defence:
    """One defence a model check found, and the adapted attacks that met it."""

    name: str  # RANDOMNESS or MASKING
    found_by: Check  # the failed model check that found it (deterministic or gradients)
    met_by: tuple[Adaptation, ...]  # adaptations that meet it; () when none did
    tried: tuple[Adaptation, ...] = ()  # adaptations of its technique that did not meet it (rounding BPDA in vain)
    bpda_check: Check | None = None  # gradients-bpda, for masked gradients when it ran

    @property
    def covered(self) -> bool:
        return bool(self.met_by)

    @property
    def technique(self) -> Technique:
        return MEETS[self.name]

    @property
    def quote(self) -> str:
        """'(deterministic: fail)': the check that found it, and its status."""
        return f"({self.found_by.name}: {self.found_by.status.value})"

    @property
    def caveat(self) -> str:
        """Why the model is not adaptive, short enough for the note under the headline."""
        if self.tried:
            return f"{self.name} found and BPDA through rounding ops did not restore the gradients"
        return f"{self.name} found and no {self.technique.value.upper()} attack ran"

    @property
    def unmet(self) -> str:
        """The check's account of a defence no adapted attack met."""
        if self.tried:
            return (
                f"{self.name} found {self.quote}, and BPDA through rounding ops in {_names(self.tried)} did not "
                f"restore the gradients ({self._bpda_status}): no adaptive attack met them"
            )
        return f"{self.name} found {self.quote} and no adaptive attack ran (no {self.technique.value.upper()})"

    @property
    def to_do(self) -> str:
        if self.tried:  # rounding was not the mask: only the user knows which module is
            return 'name the masking submodule with bpda = "MODULE.PATH" in the suite\'s gradient attacks'
        return TO_DO

    @property
    def met(self) -> str:
        """The check's account of a defence adapted attacks met: 'randomness (deterministic: fail) met EOT 20 in
        apgd-ce, apgd-t'."""
        by_setting: dict[str, list[Adaptation]] = {}
        for adaptation in self.met_by:
            by_setting.setdefault(adaptation.setting, []).append(adaptation)
        met = ", ".join(f"{_label(group[0])} in {_names(group)}" for group in by_setting.values())
        restored = f" ({self._bpda_status})" if self.bpda_check is not None else ""
        return f"{self.name} {self.quote} met {met}{restored}"

    @property
    def account(self) -> str:
        """What the report says of it: who met it, or that nothing did."""
        return self.met if self.covered else self.unmet

    @property
    def _bpda_status(self) -> str:
        return f"{BPDA_CHECK}: {self.bpda_check.status.value}" if self.bpda_check is not None else BPDA_CHECK


@dataclass(frozen=True)
class Evaluation:
    """How one model's attacks were adapted to it: the defences found, every adaptation, the judging rule."""

    model: str  # the model id
    checked: bool  # the manifest has the sweep's model checks for it
    defences: tuple[Defence, ...]  # what the model checks found; () when nothing
    adaptations: tuple[Adaptation, ...]  # every adaptation of an attack with rows for the model, in manifest order
    draws: int | None  # forward passes judging each prediction (ModelEntry.draws); None: an older sweep

    @property
    def uncovered(self) -> tuple[Defence, ...]:
        return tuple(defence for defence in self.defences if not defence.covered)

    @property
    def caveat(self) -> str | None:
        """Why the headline marks this model "not adaptive"; None when it need not."""
        return "; ".join(defence.caveat for defence in self.uncovered) or None

    @property
    def judging(self) -> str | None:
        """The rule that counts a random model's prediction as correct; None for one pass."""
        if self.draws is None or self.draws <= 1:
            return None
        return f"correct when a majority of {self.draws} forward passes are"

    @property
    def shown(self) -> bool:
        """Whether the Adaptive evaluation section has anything to say about this model."""
        return bool(self.defences or self.adaptations or self.judging)


def evaluate(entry: ModelEntry, attacks: Collection[str]) -> Evaluation:
    """The model's defences (from its model checks) against the adaptations of `attacks`, the attacks with rows."""
    checks = {check.name: check for check in entry.model_checks or ()}
    adaptations = tuple(a for a in entry.adaptations if a.attack in attacks)
    defences = tuple(
        _defence(name, checks[check], adaptations, checks.get(BPDA_CHECK))
        for name, check in FOUND_BY.items()
        if check in checks and checks[check].status is Status.FAIL
    )
    return Evaluation(entry.id, entry.model_checks is not None, defences, adaptations, entry.draws)


def _defence(name: str, found_by: Check, adaptations: tuple[Adaptation, ...], bpda_check: Check | None) -> Defence:
    """Splits the adaptations of the defence's technique into those that meet it and those tried in vain."""
    mine = [a for a in adaptations if a.technique is MEETS[name]]
    met = tuple(a for a in mine if _meets(a, bpda_check))
    tried = tuple(a for a in mine if a not in met and a.technique is Technique.BPDA)
    return Defence(name, found_by, met, tried, bpda_check if name == MASKING else None)


def _meets(adaptation: Adaptation, bpda_check: Check | None) -> bool:
    if adaptation.technique is Technique.EOT:
        return _passes(adaptation.setting) >= MIN_EOT_PASSES
    if adaptation.setting.strip().lower() in ROUNDING:  # the gradients-bpda check says whether rounding was the mask
        return bpda_check is None or bpda_check.status is not Status.FAIL
    return bool(adaptation.setting.strip())  # a named module: its backward is the identity


def _passes(setting: str) -> int:
    try:
        return int(setting)
    except ValueError:
        return 0


def _label(adaptation: Adaptation) -> str:
    """'EOT 20', 'BPDA rounding', 'BPDA quantise'."""
    return f"{adaptation.technique.value.upper()} {adaptation.setting}"


def _names(adaptations: Iterable[Adaptation]) -> str:
    return ", ".join(dict.fromkeys(a.attack for a in adaptations))


def attacked(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """The attacks with attack rows among one model's rows (records of results.csv)."""
    return {row["attack"] for row in rows if row["kind"] == RowKind.ATTACK}


def evaluations(rows: Iterable[Mapping[str, Any]], models: Mapping[str, ModelEntry]) -> dict[str, Evaluation]:
    """`evaluate` for every model of the rows (records of results.csv with model, kind and attack), by id, in row
    order (an entry with defaults where `models` has none)."""
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    return {
        model: evaluate(models.get(model) or ModelEntry(id=model), attacked(mine)) for model, mine in by_model.items()
    }
