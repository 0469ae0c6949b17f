"""Per-example outcomes of a finished sweep: for each row of results.csv, which of the model's examples it counts as
correct. Read from the cell each row names; a worst-case row has no cell of its own and is rebuilt from the attack
rows it lists, by the sweep's rule (balls nest: correct clean and under every listed attack of its norm at every eps
up to its own). Every row rebuilt must count what results.csv says it counts, else the files disagree and nothing
is compared. Paired comparisons (compare) and the per-example export read these. No torch.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustcnn.cell_file import CELLS, BadCell, Cell, read_cell, subset_hash
from robustcnn.errors import UsageError
from robustcnn.report.load import SweepData
from robustcnn.results import EPS_TOLERANCE, RowKind, examples_file, params_object

PER_EXAMPLE_KINDS = (RowKind.CLEAN, RowKind.ATTACK, RowKind.WORST_CASE, RowKind.CERTIFIED, RowKind.SMOOTHED)
# probe rows are left out: the first few examples attacked afresh for the checks, not results
MAX_EXAMPLES_BYTES = 1 << 28  # an examples file's arrays unpacked: 50,000 file names of 1,000 characters fit


@dataclass(frozen=True)
class ExampleSet:
    """The test images a model was evaluated on, in the order of its flags."""

    dataset: str
    subset: str  # hash of their indices in the test split ("" for sweeps made before it was recorded)
    n: int
    index: np.ndarray | None = None  # (n,) int64 indices in the test split; None: the sweep wrote no examples file
    label: np.ndarray | None = None  # (n,) int64 true labels
    name: np.ndarray | None = None  # (n,) str file names, for image folders

    def same_images(self, other: ExampleSet) -> bool:
        """Whether two models' flags refer to the same images in the same order (then they pair up)."""
        return bool(self.subset) and (self.dataset, self.subset, self.n) == (other.dataset, other.subset, other.n)


@dataclass
class Outcomes:
    """One model's per-example results: `correct(row)` for a row of `data.results` (its index there)."""

    data: SweepData
    model: str
    examples: ExampleSet
    records: dict[int, dict[str, Any]] = field(init=False)  # this model's rows of results, by index
    _cells: dict[str, Cell] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        frame = self.data.results
        mine = frame[frame["model"] == self.model]  # read once: a row at a time through pandas is slow
        self.records = {int(i): record for i, record in zip(mine.index, mine.to_dict("records"), strict=True)}

    def rows(self) -> list[int]:
        """This model's rows that have per-example results, in results.csv order."""
        kinds = {kind.value for kind in PER_EXAMPLE_KINDS}
        return [row for row, record in self.records.items() if record["kind"] in kinds]

    def correct(self, row: int) -> np.ndarray:
        """(n,) bool: the examples results.csv's `row` counts as correct, checked against its n_correct."""
        record = self.records[row]
        worst_case = record["kind"] == RowKind.WORST_CASE.value
        flags = self._worst_case(record) if worst_case else self._from_cell(record)
        if len(flags) != record["n"] or int(flags.sum()) != record["n_correct"]:
            raise UsageError(
                f"{self.data.out_dir}: results.csv row {row + 2} ({self.model}, {record['attack']}) counts "
                f"{record['n_correct']:g} of {record['n']:g} correct, its per-example results {int(flags.sum())} of "
                f"{len(flags)}: the files disagree; re-run the sweep to rewrite them"
            )
        return flags

    def _from_cell(self, record) -> np.ndarray:
        cell = self._cell(str(record["cell"]))
        name, value = ("scale", record["scale"]) if record["is_patch"] else ("eps", record["eps"])
        for values, flags in zip(cell.values, cell.flags, strict=True):
            found = values.get(name)
            if found is not None and abs(found - value) <= EPS_TOLERANCE:
                return flags
        raise UsageError(f"{self._cell_path(str(record['cell']))} has no row at {name} {value:g}; re-run the sweep")

    def _cell(self, key: str) -> Cell:
        if key not in self._cells:
            path = self._cell_path(key)
            if not key or not path.is_file():
                raise UsageError(
                    f"{path} is missing: per-example results need the sweep's {CELLS}/ folder (re-run the sweep)"
                )
            try:
                self._cells[key] = read_cell(path)
            except (BadCell, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                raise UsageError(f"{path} is not a readable cell ({error}); re-run the sweep") from None
        return self._cells[key]

    def _cell_path(self, key: str) -> Path:
        safe = key if key.isalnum() else "(not a cell key)"  # results.csv is the user's file: no path from it
        return self.data.out_dir / CELLS / f"{safe}.npz"

    def _worst_case(self, record) -> np.ndarray:
        """Correct clean and under each attack the row lists, of its norm, at every eps up to its own."""
        attacks = params_object(record["params"]).get("attacks")
        if not isinstance(attacks, list):
            raise UsageError(f"{self.data.out_dir}: a worst-case row of {self.model} does not list its attacks")
        clean = [row for row, r in self.records.items() if r["kind"] == RowKind.CLEAN.value]
        if len(clean) != 1:
            raise UsageError(f"results.csv has {len(clean)} clean rows for {self.model}, not one")
        flags = self.correct(clean[0]).copy()
        names = {str(a) for a in attacks}
        for row, other in self.records.items():
            if (
                other["kind"] == RowKind.ATTACK.value
                and not other["is_patch"]
                and other["attack"] in names
                and other["norm"] == record["norm"]
                and other["eps"] <= record["eps"] + EPS_TOLERANCE
            ):
                flags &= self.correct(row)
        return flags


def outcomes(data: SweepData, model: str) -> Outcomes:
    """The per-example results of `model` in the sweep `data`."""
    if model not in data.models:
        raise UsageError(f"{data.out_dir} has no model {model!r}; it has: {', '.join(data.model_ids)}")
    return Outcomes(data, model, read_examples(data, model))


def read_examples(data: SweepData, model: str) -> ExampleSet:
    """The model's ExampleSet: dataset and subset from the manifest, indices and labels from its examples file."""
    entry = data.models[model]
    clean = data.results[(data.results["model"] == model) & (data.results["kind"] == RowKind.CLEAN.value)]
    n = int(clean["n"].iloc[0]) if len(clean) and not math.isnan(clean["n"].iloc[0]) else entry.n or 0
    dataset = entry.dataset or (str(clean["dataset"].iloc[0]) if len(clean) else "")
    path = data.out_dir / examples_file(model)
    if not path.is_file():
        return ExampleSet(dataset, entry.subset, n)
    arrays = _read_arrays(path, n)
    if entry.subset and subset_hash(arrays["index"]) != entry.subset:
        raise UsageError(f"{path} lists other images than manifest.json's subset {entry.subset}; re-run the sweep")
    return ExampleSet(dataset, entry.subset, n, arrays["index"], arrays["label"], arrays.get("name"))


def _read_arrays(path: Path, n: int) -> dict[str, np.ndarray]:
    """index and label (int, length n) and name (text, optional), size-checked before anything is unpacked."""
    kinds = {"index": "iu", "label": "iu", "name": "U"}
    try:
        with np.load(path, allow_pickle=False) as data:  # never unpickle
            sizes = {info.filename.removesuffix(".npy"): info.file_size for info in data.zip.infolist()}
            unknown = set(sizes) - set(kinds)
            if unknown or not {"index", "label"} <= set(sizes) or sum(sizes.values()) > MAX_EXAMPLES_BYTES:
                raise ValueError(f"arrays {sorted(sizes)}, expected index, label and maybe name")
            arrays = {name: data[name] for name in sizes}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UsageError(f"{path} is not a readable examples file ({error}); re-run the sweep") from None
    for name, array in arrays.items():
        if array.shape != (n,) or array.dtype.kind not in kinds[name]:
            raise UsageError(f"{path}: {name} is {array.dtype} {array.shape}, not {n} values; re-run the sweep")
    return arrays
