"""A finished sweep in other shapes: one row per example, to join with your own records of the images, or
RobustBench's model-info JSON per model.

    robustcnn.export("reports/mnist", per_example=True)                  # -> reports/mnist/per_example.csv
    robustcnn.export("reports/mnist", per_example=True, fmt="parquet")   # needs pyarrow: robustcnn[parquet]
    robustcnn.export("reports/mnist", fmt="robustbench")                 # -> reports/mnist/robustbench/Linf/*.json
    python -m robustcnn.export reports/mnist --per-example

Reads results.csv, manifest.json, cells/ and examples/ (robustcnn.outcomes): no torch. The formats are the entries of
`FORMATS` (formats.py); table.py writes the per-example ones, robustbench.py the model-info files.
"""

from __future__ import annotations

from pathlib import Path

from robustcnn.export import robustbench, table  # noqa: F401  (registers the formats)
from robustcnn.export.formats import FORMATS, Exported, Format, choose, target
from robustcnn.report.load import load_sweep

__all__ = ["FORMATS", "Exported", "Format", "export"]


def export(
    out: str | Path, per_example: bool = False, fmt: str | None = None, to: str | Path | None = None
) -> Exported:
    """Writes the sweep folder `out` as `fmt`: csv or parquet (`per_example`: one row per model, results row and
    example; csv unless `to`'s suffix says parquet) or robustbench (one JSON per model and threat model).

    It goes into the sweep folder (per_example.csv, per_example.parquet, robustbench/), or to `to`: a file for a
    table, a folder for robustbench. Everything is checked before the first byte is written, and a table is
    written to a temp file renamed at the end, so a failed export leaves no half file.
    """
    chosen = choose(per_example, fmt, to)
    chosen.check()  # a missing extra is one line before the sweep is read
    data = load_sweep(out)
    return chosen.write(data, target(chosen, data.out_dir, to))


from robustcnn.callable_module import make_callable  # noqa: E402 - after `export` exists

make_callable(__name__, export)
