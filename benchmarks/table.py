"""The benchmark's output: one row per figure, written as a Markdown table and a CSV side by side."""

from __future__ import annotations

import csv
import math
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from robustcnn.fileio import atomic_path, write_text

TABLE_MD = "benchmarks.md"
TABLE_CSV = "benchmarks.csv"
ACCURACY_CSV = "accuracy.csv"
OPERATORS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}  # the comparisons a target may use


@dataclass(frozen=True)
class Row:
    section: str  # sweep, attack, train, data, report
    figure: str  # what was timed, against what
    value: float  # the headline number, in `unit`
    unit: str  # "x faster" (baseline / ours), "x limit" (ours / limit), "s", "pp"
    target: str = ""  # e.g. ">= 3" or "<= 1.15"; empty: shown for context, no target
    seconds: float = math.nan  # median seconds of the measured variant
    baseline: str = ""  # what `value` compares with
    baseline_seconds: float = math.nan  # median seconds of the baseline, same rounds
    spread: str = ""  # seconds of each round of the measured variant, in order
    baseline_spread: str = ""  # seconds of each round of the baseline
    repeats: int = 0  # rounds the medians are taken over
    note: str = ""

    @property
    def status(self) -> str:
        """PASS or MISS against the target; '-' for context rows."""
        if not self.target:
            return "-"
        op, threshold = self.target.split()
        return "PASS" if OPERATORS[op](self.value, float(threshold)) else "MISS"

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def _number(value: float, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    if not records:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def markdown(rows: Sequence[Row], accuracy: Sequence[dict[str, Any]], header: dict[str, Any], notes: list[str]) -> str:
    lines = ["# robustcnn speed benchmarks", ""]
    lines += [f"- **{key}**: {value}" for key, value in header.items()]
    columns = ["section", "figure", "value", "target", "status", "seconds: median (rounds)", "baseline"]
    columns += ["baseline s: median (rounds)", "note"]
    lines += ["", "| " + " | ".join(columns) + " |"]
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [
            row.section,
            row.figure,
            f"{_number(row.value)} {row.unit}",
            row.target,
            row.status,
            _seconds(row.seconds, row.spread),
            row.baseline,
            _seconds(row.baseline_seconds, row.baseline_spread),
            row.note,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    if accuracy:
        lines += ["", "## Accuracy side by side (sweep section)", ""]
        columns = list(accuracy[0])
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for record in accuracy:
            lines.append("| " + " | ".join(_cell(record[c]) for c in columns) + " |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _seconds(value: float, spread: str) -> str:
    return _number(value) + (f" ({spread})" if spread else "")


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_all(out: Path, rows: Sequence[Row], accuracy: Sequence[dict], header: dict, notes: list[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / TABLE_CSV, [row.record() for row in rows])
    written = [out / TABLE_CSV]
    if accuracy:
        write_csv(out / ACCURACY_CSV, accuracy)
        written.append(out / ACCURACY_CSV)
    write_text(out / TABLE_MD, markdown(rows, accuracy, header, notes))
    return [out / TABLE_MD, *written]


CSV_COLUMNS = [f.name for f in fields(Row)] + ["status"]
