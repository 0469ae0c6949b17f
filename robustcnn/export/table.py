"""The per-example table: one row per (model, row of results.csv, example), written as CSV or Parquet.

Columns: the results row's model, kind, attack, attack_type, norm, eps, scale (patch rows) and params; the example's
dataset, index (its position in the test split), file (its path in an image folder; only when a model has one),
label; and correct (still classified correctly under that row). Models come in results.csv order, each with its
rows in results.csv order (probe rows left out: `robustcnn.outcomes`), each row's examples in the order of its flags.

The table is written a chunk at a time (CHUNK_LINES lines), so 50,000 examples x 100 rows x several models take the
memory of one chunk, not of the whole table. Each row's flags are checked against its n_correct first
(`Outcomes.correct`): a table that disagrees with results.csv is never written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustcnn.errors import UsageError
from robustcnn.export.formats import FORMATS, Exported, Format
from robustcnn.fileio import atomic_path
from robustcnn.outcomes import ExampleSet, Outcomes, read_examples
from robustcnn.report.load import SweepData
from robustcnn.results import csv_text, examples_file

ROW_TEXT = ("model", "kind", "attack", "attack_type", "norm")  # per results row, before eps and scale
ROW_NUMBERS = ("eps", "scale")  # eps NaN on patch rows, scale NaN on the others
CHUNK_LINES = 1 << 20  # table lines held at once: ~100 MB of columns, whatever the size of the sweep


def columns(with_files: bool) -> list[str]:
    file = ["file"] if with_files else []
    return [*ROW_TEXT, *ROW_NUMBERS, "params", "dataset", "index", *file, "label", "correct"]


def examples_of(data: SweepData) -> dict[str, ExampleSet]:
    """Every model's examples, read before anything is written: a sweep without them is one clear error."""
    found = {}
    for model in data.model_ids:
        examples = read_examples(data, model)
        if examples.index is None:
            raise UsageError(
                f"{data.out_dir / examples_file(model)} is missing: this sweep was made before robustcnn recorded "
                "which images each model saw; re-run it with the same command (finished cells are reused)"
            )
        found[model] = examples
    return found


def chunks(data: SweepData, examples: dict[str, ExampleSet], text: Callable[[str], str]) -> Iterator[pd.DataFrame]:
    """The table in frames of about CHUNK_LINES lines; `text` is applied to every text cell (CSV's formula guard)."""
    with_files = any(e.name is not None for e in examples.values())
    for model, found in examples.items():
        outcomes = Outcomes(data, model, found)  # its cells stay cached for this model only
        files = _files(found, with_files, text)
        batch: list[tuple[dict[str, Any], np.ndarray]] = []
        for row in outcomes.rows():
            batch.append((outcomes.records[row], outcomes.correct(row)))  # the row as outcomes read it
            if len(batch) * max(found.n, 1) >= CHUNK_LINES:
                yield _frame(batch, found, files, text)
                batch = []
        if batch:
            yield _frame(batch, found, files, text)


def _files(examples: ExampleSet, with_files: bool, text: Callable[[str], str]) -> list[str | None] | None:
    """(n,) the file column of one model (None where it has no names), or None when no model has one."""
    if not with_files:
        return None
    if examples.name is None:
        return [None] * examples.n
    # a name that was not valid UTF-8 on disk holds a lone surrogate, which no UTF-8 file can: written as \\udcxx
    return [text(str(name).encode("utf-8", "backslashreplace").decode("utf-8")) for name in examples.name]


def _frame(
    batch: list[tuple[dict[str, Any], np.ndarray]],
    examples: ExampleSet,
    files: list[str | None] | None,
    text: Callable[[str], str],
) -> pd.DataFrame:
    """k results rows x n examples: each row's columns repeated n times, the examples' tiled k times."""
    n, k = examples.n, len(batch)
    records = [record for record, _ in batch]
    table: dict[str, object] = {}
    for name in ROW_TEXT:
        table[name] = _repeated([text(str(r[name])) for r in records], n)
    for name in ROW_NUMBERS:
        table[name] = np.repeat(np.array([r[name] for r in records], dtype=np.float64), n)
    table["params"] = _repeated([text(str(r["params"])) for r in records], n)
    table["dataset"] = _repeated([text(examples.dataset)] * k, n)
    table["index"] = np.tile(examples.index.astype(np.int64), k)
    if files is not None:
        table["file"] = _tiled(files, k)
    table["label"] = np.tile(examples.label.astype(np.int64), k)
    table["correct"] = np.concatenate([flags for _, flags in batch]).astype(bool)  # (k * n,) row after row
    return pd.DataFrame(table)


def _repeated(values: list[str], n: int) -> pd.Categorical:
    """(len(values) * n,) each value n times, as codes into the distinct values: a column of a million strings
    costs a million small integers, not a million string objects."""
    return _categorical(values, lambda codes: np.repeat(codes, n))


def _tiled(values: list[str | None], k: int) -> pd.Categorical:
    """(k * len(values),) the values k times over (None stays missing: empty in CSV, null in Parquet)."""
    return _categorical(values, lambda codes: np.tile(codes, k))


def _categorical(values: list[str | None], spread: Callable[[np.ndarray], np.ndarray]) -> pd.Categorical:
    present = [v for v in values if v is not None]
    categories = sorted(set(present))
    where = {value: code for code, value in enumerate(categories)}
    codes = np.array([where[v] if v is not None else -1 for v in values], dtype=np.int64)
    return pd.Categorical.from_codes(spread(codes), categories=categories)


def write_csv(data: SweepData, path: Path) -> Exported:
    examples = examples_of(data)
    rows = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(columns(any(e.name is not None for e in examples.values()))) + "\n")
        for frame in chunks(data, examples, csv_text):  # text cells a spreadsheet would run get a leading '
            frame.to_csv(f, header=False, index=False)
            rows += len(frame)
    return Exported("csv", (path,), rows)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError(
            "--format parquet needs pyarrow: pip install 'robustcnn[parquet]' (or export --format csv)"
        ) from None
    return pyarrow, pyarrow.parquet


def _schema(pa, with_files: bool):
    types = {"eps": pa.float64(), "scale": pa.float64(), "index": pa.int64(), "label": pa.int64()}
    types["correct"] = pa.bool_()
    return pa.schema([(name, types.get(name, pa.string())) for name in columns(with_files)])


def write_parquet(data: SweepData, path: Path) -> Exported:
    pa, pq = _pyarrow()
    examples = examples_of(data)
    schema = _schema(pa, any(e.name is not None for e in examples.values()))
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:  # one row group per chunk
        for frame in chunks(data, examples, str):
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            rows += len(frame)
    return Exported("parquet", (path,), rows)


FORMATS.register("csv")(Format("csv", True, "per_example.csv", write_csv))


def _require_pyarrow() -> None:
    _pyarrow()


FORMATS.register("parquet")(Format("parquet", True, "per_example.parquet", write_parquet, check=_require_pyarrow))
