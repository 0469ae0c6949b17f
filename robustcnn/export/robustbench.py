"""RobustBench's model-info JSON, one per model and threat model (Linf, L2) the sweep has a worst case of.

RobustBench keeps one file per model at model_info/<dataset>/<Linf|L2>/<name>.json with the fields of its
`ModelInfo` (robustbench/utils.py): link, name, authors, additional_data, number_forward_passes, dataset, venue,
architecture, eps, clean_acc, reported, autoattack_acc, footnote; accuracies are percentages as strings ("93.27"),
eps as written ("8/255"). We fill what the sweep knows and leave the rest null, as RobustBench's own writer does:
the paper's link, name, authors, venue and reported number are the user's to add.

The numbers are the headline's (robustcnn.report.tables): clean accuracy, and the worst case over every attack of
the norm at the eps the sweep chose for it. `autoattack_acc` is filled only when the sweep ran a suite robustcnn
ships as AutoAttack-grade (GRADED_SUITES), exactly as shipped: `autoattack-grade`, or `adaptive`, which is the same
cascade with each gradient attack adapted to a defence the model checks found (EOT, BPDA), as AutoAttack's own
"rand" version adapts to randomness. Anything else fills no AutoAttack field: its worst case is in
`robustcnn.worst_case_acc` and the footnote names the suite. The graded suites run AutoAttack's attacks through
ART, not the official AutoAttack; the footnote says so. `unreliable` is true when the report marks the model "not
adaptive" (a defence its checks found that no attack adapted to: its robust number is an upper bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import tomllib

from robustcnn.errors import UsageError
from robustcnn.export.formats import FORMATS, Exported, Format
from robustcnn.fileio import suite_folders, write_json
from robustcnn.report.format import format_eps
from robustcnn.report.load import SweepData
from robustcnn.report.tables import Cell, Headline, headline
from robustcnn.results import EPS_TOLERANCE, RUN, Manifest, ModelEntry, RowKind, file_stem, params_object
from robustcnn.threat import Norm

THREATS = {"inf": "Linf", "2": "L2"}  # results.csv's norm -> RobustBench's ThreatModel (its folder name)
GRADED_SUITES = ("autoattack-grade", "adaptive")  # shipped suites whose worst case is AutoAttack-grade
SUITE_IDENTITY = ("attack", "cascade", "draws")  # what makes a suite's numbers; its comments and n do not


@dataclass(frozen=True)
class SuiteGrade:
    """Whether the sweep's suite is one robustcnn ships as AutoAttack-grade, exactly as shipped."""

    name: str  # as the manifest names it ("" when it names none)
    description: str  # its one-line description (the shipped file's, when graded)
    attacks: dict[str, tuple[str, ...]]  # norm -> the graded suite's attacks of that norm; {} when not graded

    @property
    def autoattack(self) -> bool:
        return bool(self.attacks)

    def covers(self, norm: str, attacks: tuple[str, ...]) -> bool:
        """Whether a worst case over `attacks` of `norm` is the graded suite's own: all of its attacks, no other."""
        return bool(self.attacks.get(norm)) and sorted(attacks) == sorted(self.attacks[norm])


def suite_grade(manifest: Manifest | None) -> SuiteGrade:
    """A suite counts only when its attacks, cascade and draws are those of the shipped file of its name: a copy
    named autoattack-grade.toml with fewer steps is not AutoAttack-grade, whatever its name."""
    suite = manifest.suite if manifest is not None else {}
    name, description = str(suite.get("name", "")), str(suite.get("description", ""))
    shipped = _toml(_shipped_suite(name) or "") if name in GRADED_SUITES else None
    ran = _toml(str(suite.get("text", "")))
    if not shipped or not ran or _identity(shipped) != _identity(ran):
        return SuiteGrade(name, description, {})
    attacks: dict[str, tuple[str, ...]] = {}
    for entry in shipped["attack"]:  # our own file: every entry has a name and a norm
        norm = Norm.parse(entry.get("norm", "inf")).value
        attacks[norm] = (*attacks.get(norm, ()), str(entry["name"]))
    return SuiteGrade(name, str(shipped.get("description", description)), attacks)


def _toml(text: str) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):  # the manifest's copy is the user's file
        return None
    return data if isinstance(data.get("attack"), list) and data["attack"] else None


def _identity(suite: dict[str, Any]) -> dict[str, Any]:
    return {key: suite.get(key) for key in SUITE_IDENTITY}


def _shipped_suite(name: str) -> str | None:
    """The shipped suite file `name` (one of GRADED_SUITES), found where the sweep finds suites."""
    for folder in suite_folders():
        if (folder / f"{name}.toml").is_file():
            return (folder / f"{name}.toml").read_text(encoding="utf-8", errors="replace")
    return None


@dataclass(frozen=True)
class ModelInfo:
    """One model's file: its threat model and the JSON."""

    model: str
    threat: str  # Linf or L2
    info: dict[str, Any]

    @property
    def path(self) -> str:
        """Relative to the export folder, as RobustBench's model_info/<dataset>/ lays files out."""
        return f"{self.threat}/{file_stem(self.model)}.json"


@dataclass(frozen=True)
class WorstCase:
    """One model's headline worst case of one norm, and what it was measured with."""

    entry: ModelEntry
    clean: Cell  # the headline's clean accuracy
    worst: Cell  # the headline's worst case: accuracy at the eps the sweep chose for it
    row: pd.Series  # that worst case's row of results.csv
    attacks: tuple[str, ...]  # the attacks it is the worst case over, as the row lists them
    graded: bool  # over exactly the attacks of a shipped AutoAttack-grade suite of this norm, run as shipped
    caveat: str | None  # why the report marks the model "not adaptive", if it does

    @property
    def threat(self) -> str:
        return THREATS[self.worst.norm]


def model_infos(data: SweepData) -> tuple[list[ModelInfo], list[str]]:
    """The model-info of every model and threat model with a worst case, and a note per model left out."""
    table = headline(data.results, data.models, data.manifest)
    grade = suite_grade(data.manifest)
    infos, notes = [], []
    for model, cells in table.rows:
        found = worst_cases(data, table, grade, model, cells)
        if not found:
            notes.append(f"{model}: no clean row or no worst case of a Linf or L2 attack; no RobustBench file")
        infos += [ModelInfo(model, case.threat, _info(data, grade, case)) for case in found]
    return infos, notes


def worst_cases(data: SweepData, table: Headline, grade: SuiteGrade, model: str, cells: list) -> list[WorstCase]:
    """The model's worst cases in the headline, one per norm RobustBench has a threat model for."""
    names = [column.attack for column in table.columns]
    clean = cells[names.index("clean")]
    worst = set(data.results.loc[data.results["kind"] == RowKind.WORST_CASE.value, "attack"])
    found = []
    for name, cell in zip(names, cells, strict=True):
        if clean is None or name not in worst or cell is None or cell.norm not in THREATS:
            continue
        row = _row(data.results, model, name, cell.eps)
        attacks = _listed(row["params"])
        graded = grade.covers(cell.norm, attacks)
        found.append(WorstCase(data.models[model], clean, cell, row, attacks, graded, table.caveats.get(model)))
    return found


def _listed(params: str) -> tuple[str, ...]:
    """The attacks a worst-case row's params list (results.csv is the user's file: anything else is none)."""
    attacks = params_object(params).get("attacks")
    return tuple(str(a) for a in attacks) if isinstance(attacks, list) else ()


def _row(results: pd.DataFrame, model: str, name: str, eps: float | None) -> pd.Series:
    rows = results[
        (results["model"] == model)
        & (results["kind"] == RowKind.WORST_CASE.value)
        & (results["attack"] == name)
        & ((results["eps"] - (eps if eps is not None else math.nan)).abs() <= EPS_TOLERANCE)
    ]
    if rows.empty:  # the headline read this row a moment ago
        raise UsageError(f"results.csv has no {name} row of {model} at eps {eps!r}")
    return rows.iloc[-1]


def _info(data: SweepData, grade: SuiteGrade, case: WorstCase) -> dict[str, Any]:
    """RobustBench's fields in its order (unknown ones null), then ours under "robustcnn"."""
    entry, robust = case.entry, f"{case.worst.accuracy * 100:.2f}"
    return {
        "link": None,
        "name": None,
        "authors": None,
        "additional_data": False if entry.kind == RUN else None,  # a run robustcnn trained saw its dataset only
        "number_forward_passes": entry.draws,  # passes that judge one prediction (1: deterministic); None: older
        "dataset": entry.dataset or str(case.row["dataset"]),
        "venue": None,
        "architecture": entry.arch or None,
        "eps": format_eps(case.worst.eps),
        "clean_acc": f"{case.clean.accuracy * 100:.2f}",
        "reported": None,
        "autoattack_acc": robust if case.graded else None,
        "footnote": _footnote(data, grade, case),
        "unreliable": case.caveat is not None,
        "robustcnn": _provenance(data, grade, case, robust),
    }


def _footnote(data: SweepData, grade: SuiteGrade, case: WorstCase) -> str:
    version = data.manifest.versions.get("robustcnn", "") if data.manifest is not None else ""
    dataset = case.entry.dataset or "its dataset"
    n = _whole(case.row["n"])
    where = f"robustcnn {version}".strip() + f", on {n if n is not None else 'its'} test images of {dataset}"
    if case.graded:
        said = f"{where}, suite {grade.name}: {grade.description}"
        adapted = [f"{a.attack} {a.technique.value} {a.setting}" for a in case.entry.adaptations]
        said += f" Adapted to this model: {', '.join(adapted)}." if adapted else ""
    else:
        suite = f"suite {grade.name!r}" if grade.name else "a suite the manifest does not name"
        said = (
            f"{where}, {suite}: the worst case over its {case.threat} attacks (robustcnn.worst_case_attacks), not an "
            "AutoAttack-grade evaluation, so autoattack_acc is empty; robustcnn.worst_case_acc holds it."
        )
        if grade.name in GRADED_SUITES:  # the name, but not the suite as shipped
            said += f" The suite differs from the shipped {grade.name}.toml, or the manifest does not record it."
    said += " Eps: the middle of the grid (the sweep recorded no reference eps)." if case.worst.guessed else ""
    return said + (f" Unreliable: {case.caveat}." if case.caveat else "")


def _provenance(data: SweepData, grade: SuiteGrade, case: WorstCase, robust: str) -> dict[str, Any]:
    manifest, results = data.manifest, data.results
    clean = results[(results["model"] == case.entry.id) & (results["kind"] == RowKind.CLEAN.value)]
    return {
        "model": case.entry.id,
        "sweep": str(data.out_dir),
        "suite": grade.name,
        "autoattack_grade": case.graded,
        "threat_model": case.threat,
        "eps": float(case.row["eps"]),
        "n": _whole(case.row["n"]),
        "clean_correct": _whole(clean["n_correct"].iloc[-1]) if len(clean) else None,
        "worst_case_acc": robust,
        "worst_case_correct": _whole(case.row["n_correct"]),
        "worst_case_attacks": list(case.attacks),
        "checkpoint_sha256": case.entry.sha256 or None,
        "adaptations": [a.to_dict() for a in case.entry.adaptations],
        "caveat": case.caveat,
        "robustcnn_version": manifest.versions.get("robustcnn") if manifest is not None else None,
        "git_sha": manifest.git_sha if manifest is not None else None,
        "finished": manifest.finished if manifest is not None else None,
    }


def _whole(value: float) -> int | None:
    """A count of results.csv (a float column, NaN where a hand-edited file left it empty)."""
    return None if math.isnan(value) else int(value)


def write_robustbench(data: SweepData, folder: Path) -> Exported:
    infos, notes = model_infos(data)
    if not infos:
        raise UsageError(
            f"{data.out_dir} has no worst case of a Linf or L2 attack to export; RobustBench's format needs one "
            "(run a suite with bounded attacks, e.g. --suite autoattack-grade)"
        )
    paths = []
    for item in infos:
        path = folder / item.path
        _make_folder(path.parent)
        write_json(path, item.info)
        paths.append(path)
    return Exported("robustbench", tuple(paths), 0, tuple(notes))


def _make_folder(path: Path) -> None:
    """The export folder and its Linf / L2 folders; never the user's path's parents (a typo is an error)."""
    for folder in (path.parent, path):
        try:
            folder.mkdir(exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot make the folder {folder}: {error.strerror or error}") from None


FORMATS.register("robustbench")(Format("robustbench", False, "robustbench", write_robustbench))
