"""The headline table: per model, clean accuracy and robust accuracy at the reference eps of each attack.

Which eps each column reads is decided by the sweep and written per model in the manifest (`HeadlineEps`:
per norm the suite's `reference_eps`, else the dataset's eps for that norm; per attack the closest grid
eps). Results of older sweeps fall back to the suite's or the threat model's eps, and without either to
the middle of the attack's eps grid, which the table then marks. A model with a defence its model checks found
(randomness, masked gradients) that no attack adapted to it met is marked "not adaptive" (`report.adaptive`): its
robust numbers are upper bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from robustcnn.report.adaptive import NOT_ADAPTIVE, evaluations
from robustcnn.report.entries import reference_eps
from robustcnn.report.format import format_eps, markdown_escape, pct
from robustcnn.results import Manifest, ModelEntry, RowKind

WORST = RowKind.WORST_CASE.value
CERTIFIED = RowKind.CERTIFIED.value


@dataclass(frozen=True)
class Cell:
    accuracy: float  # fraction in [0, 1]
    ci_low: float  # Wilson 95% interval
    ci_high: float
    eps: float | None  # the grid eps this number was taken at; None for clean
    guessed: bool = False  # no reference eps known: the middle of the grid was used
    strongest: bool = False  # the lowest robust accuracy among the row's attacks at the same norm and eps
    norm: str = ""  # the attack's norm; "" for clean

    @property
    def text(self) -> str:
        return pct(self.accuracy)

    @property
    def interval(self) -> str:
        return f"[{self.ci_low * 100:.1f}, {self.ci_high * 100:.1f}]"


@dataclass(frozen=True)
class Column:
    attack: str  # attack name in the suite, "clean" or "worst-case"
    eps: float | None  # the eps every model was read at, None when it differs between models
    certified: bool = False  # a certified (proven) accuracy: a lower bound, where attacks give upper bounds

    @property
    def label(self) -> str:
        notes = ["certified"] if self.certified else []
        notes += [f"eps {format_eps(self.eps)}"] if self.eps is not None else []
        return f"{self.attack} ({', '.join(notes)})" if notes else self.attack


@dataclass(frozen=True)
class Headline:
    columns: list[Column]  # clean, every eps attack in suite order, worst-case
    rows: list[tuple[str, list[Cell | None]]]  # (model, one cell per column; None when not in the sweep)
    guessed: bool  # some reference eps were guessed (no reference_eps and no threat model)
    caveats: dict[str, str] = field(default_factory=dict)  # model -> why it is "not adaptive": a defence its model
    # checks found met no attack adapted to it, so its robust numbers are upper bounds (report.adaptive)

    def caveat_note(self, escape: Callable[[str], str] = str) -> str:
        """The line under the table that explains the marker ("" when no model carries it); `escape` the user text
        (model ids) for Markdown."""
        if not self.caveats:
            return ""
        reasons = "; ".join(f"{escape(model)}: {reason}" for model, reason in self.caveats.items())
        return f"{NOT_ADAPTIVE}: {reasons}: these robust numbers are upper bounds a stronger attack may lower"


HEADLINE_COLUMNS = ["model", "kind", "attack", "norm", "eps", "is_patch", "accuracy", "ci_low", "ci_high"]
ROW_KEY = ("model", "kind", "attack", "eps", "scale")  # a row's place; a re-run cell's row replaces the one before


def headline_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A sweep's own results rows (canonical already: `results.COLUMNS`, NaN for no number) as `headline` reads
    them: `is_patch` decided as `report.load` decides it, the last row of each place kept, in first-seen order."""
    kept: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        eps, scale = float(row["eps"]), float(row["scale"])
        patch = row["attack_type"] == "patch" or (math.isnan(eps) and not math.isnan(scale))
        record = {column: row[column] for column in HEADLINE_COLUMNS if column != "is_patch"}
        key = tuple(_key_value(row[column]) for column in ROW_KEY)
        kept.pop(key, None)  # pandas' drop_duplicates(keep="last") keeps the last row at its own position
        kept[key] = {**record, "eps": eps, "is_patch": patch}
    return list(kept.values())


def _key_value(value: Any) -> Any:
    """NaN equals NaN as a key, as in pandas' drop_duplicates."""
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def headline(
    rows: Sequence[Mapping[str, Any]] | Any, models: dict[str, ModelEntry], manifest: Manifest | None
) -> Headline:
    """The table from results rows as `report.load` normalises them: its DataFrame, or records with `HEADLINE_COLUMNS`
    in file order (`headline_rows`: the sweep command's, which prints the table without importing pandas)."""
    if hasattr(rows, "to_dict"):  # a DataFrame
        rows = rows[HEADLINE_COLUMNS].to_dict("records")
    kinds = (RowKind.ATTACK.value, CERTIFIED, WORST)  # not the probes
    attacked = [row for row in rows if row["kind"] in kinds and not row["is_patch"]]

    def named(kind: str) -> list[str]:
        return list(dict.fromkeys(row["attack"] for row in attacked if row["kind"] == kind))

    proofs, worst = named(CERTIFIED), named(WORST)  # lower bounds, not attacks; one worst case per norm
    names = ["clean", *named(RowKind.ATTACK.value), *proofs, *worst]
    clean = {row["model"]: row for row in rows if row["kind"] == RowKind.CLEAN.value}  # the last one of each model
    curves: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in attacked:
        curves.setdefault((row["model"], row["attack"]), []).append(row)
    table = []
    for model in dict.fromkeys(row["model"] for row in rows):
        entry = models.get(model) or ModelEntry(id=model)
        cells = [
            _clean_cell(clean.get(model))
            if name == "clean"
            else _attack_cell(curves.get((model, name)), name, entry, manifest)
            for name in names
        ]
        table.append((model, _mark_strongest(cells, names, set(worst) | set(proofs))))
    columns = [_column(name, [cells[i] for _, cells in table], name in proofs) for i, name in enumerate(names)]
    guessed = any(cell is not None and cell.guessed for _, cells in table for cell in cells)
    return Headline(columns, table, guessed, caveats(rows, models))


def caveats(rows: Sequence[Mapping[str, Any]], models: dict[str, ModelEntry]) -> dict[str, str]:
    """Per model that needs it, why its headline is "not adaptive" (the `adaptive` check's rule)."""
    found = evaluations(rows, models)
    return {model: evaluation.caveat for model, evaluation in found.items() if evaluation.caveat}


def _clean_cell(row: Mapping[str, Any] | None) -> Cell | None:
    return None if row is None else _from_row(row, None)


def _attack_cell(
    rows: list[Mapping[str, Any]] | None, name: str, entry: ModelEntry, manifest: Manifest | None
) -> Cell | None:
    """The row at the eps the sweep chose for this column; for older sweeps the grid eps closest to the
    reference eps (a tie goes to the larger, harder eps), or the middle of the grid, marked as guessed."""
    if rows is None:
        return None
    grid = sorted({row["eps"] for row in rows})
    decided = entry.headline
    if decided is not None and name in decided.attack_eps:
        eps, guessed = min(grid, key=lambda e: abs(e - decided.attack_eps[name])), False
    else:
        target = reference_eps(manifest, entry, rows[0]["norm"])
        guessed = target is None
        target = grid[(len(grid) - 1) // 2] if guessed else target
        eps = min(grid, key=lambda e: (abs(e - target), -e))
    return _from_row([row for row in rows if row["eps"] == eps][-1], eps, guessed)


def _from_row(row: Mapping[str, Any], eps: float | None, guessed: bool = False) -> Cell:
    norm = str(row["norm"]) if eps is not None else ""
    return Cell(float(row["accuracy"]), float(row["ci_low"]), float(row["ci_high"]), eps, guessed, norm=norm)


def _mark_strongest(cells: list[Cell | None], names: list[str], worst: set[str]) -> list[Cell | None]:
    """Bold the lowest robust accuracy among attacks read at the same norm and eps (comparing an attack at
    0.1 with one at 0.3 would say nothing about which is stronger); the worst case is never bolded."""
    robust = [i for i, c in enumerate(cells) if c is not None and names[i] != "clean" and names[i] not in worst]
    groups: dict[tuple[str, float | None], list[int]] = {}
    for i in robust:
        groups.setdefault((cells[i].norm, cells[i].eps), []).append(i)
    marked = list(cells)
    for members in groups.values():
        if len(members) < 2:
            continue
        lowest = min(cells[i].accuracy for i in members)
        for i in members:
            marked[i] = replace(cells[i], strongest=True) if cells[i].accuracy == lowest else cells[i]
    return marked


def _column(name: str, cells: list[Cell | None], certified: bool) -> Column:
    eps = {c.eps for c in cells if c is not None}
    return Column(name, eps.pop() if len(eps) == 1 else None, certified)


def text_table(table: Headline) -> str:
    """Plain text for the terminal: accuracy in %, one row per model, eps in the header."""
    header = ["model", *[_short_label(c) for c in table.columns]]
    body = [
        [_text_model(table, model), *[_text_cell(c, col) for c, col in zip(cells, table.columns, strict=True)]]
        for model, cells in table.rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *body]
    ]
    note = "accuracy in %, at each attack's reference eps; worst-case = every attack at once"
    proofs = [column.attack for column in table.columns if column.certified]
    if proofs:
        note += f"; {', '.join(proofs)}: certified (proven) accuracy, a lower bound"
    if table.guessed:
        note += "; * no reference eps for this norm in the manifest: middle of the eps grid"
    notes = [note, table.caveat_note()] if table.caveats else [note]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], *notes])


def _text_model(table: Headline, model: str) -> str:
    return f"{model} [{NOT_ADAPTIVE}]" if model in table.caveats else model


def _short_label(column: Column) -> str:
    return (
        column.attack if column.eps is None or column.attack == "clean" else f"{column.attack}@{format_eps(column.eps)}"
    )


def _text_cell(cell: Cell | None, column: Column) -> str:
    if cell is None:
        return "-"
    text = f"{cell.accuracy * 100:.1f}"
    if column.eps is None and cell.eps is not None:
        text += f"@{format_eps(cell.eps)}"
    return text + ("*" if cell.guessed else "")


def markdown_table(table: Headline) -> str:
    """Markdown with 95% intervals, user text escaped so a name can't break the table."""
    header = ["model", *[markdown_escape(c.label) for c in table.columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for model, cells in table.rows:
        values = [_markdown_cell(c, col) for c, col in zip(cells, table.columns, strict=True)]
        name = markdown_escape(model) + (f" *({NOT_ADAPTIVE})*" if model in table.caveats else "")
        lines.append("| " + " | ".join([name, *values]) + " |")
    return "\n".join(lines)


def _markdown_cell(cell: Cell | None, column: Column) -> str:
    if cell is None:
        return "-"
    text = f"{cell.text} {cell.interval}"
    if column.eps is None and cell.eps is not None:
        text += f" at eps {format_eps(cell.eps)}"
    text = f"**{text}**" if cell.strongest else text
    return text.replace("[", "\\[").replace("]", "\\]") + ("\\*" if cell.guessed else "")
