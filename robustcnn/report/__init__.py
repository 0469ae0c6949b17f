"""The report: one self-contained HTML page, a Markdown summary and the sanity checks of a sweep.

    robustcnn.report("reports/mnist")          # -> reports/mnist/report.html (+ summary.md, checks.json)
    python -m robustcnn.report reports/mnist

Reads results.csv, manifest.json, gallery/, patches/, and for the paired comparisons cells/ and examples/ (see
robustcnn.results): no torch, so it renders in about a second and re-runs on old results.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustcnn.results import Check, Manifest, Status

if TYPE_CHECKING:
    import pandas as pd

# The report's modules (pandas, jinja2, Pillow) are imported where they are used, not here: the sweep command prints
# its terminal table through `summary_of_rows` and would otherwise pay ~0.7 s of start-up for imports it never uses.

__all__ = ["Check", "Status", "Written", "report", "summary_of_rows", "summary_table", "write_report"]


@dataclass(frozen=True)
class Written:
    path: Path  # report.html
    table: str  # the plain-text headline table
    checks: list[Check]  # every sanity check, as in checks.json


def report(out_dir: str | Path, baseline: str | None = None) -> Path:
    """Writes report.html, summary.md, checks.json and comparisons.csv into the sweep directory; returns
    report.html's path. `baseline`: compare each model with this one (default: every pair of models).

    Everything is read, checked and rendered before the first file is written, so bad input (a missing
    results.csv, a broken manifest.json) raises UsageError and leaves earlier reports untouched.
    """
    return write_report(out_dir, baseline).path


def write_report(out_dir: str | Path, baseline: str | None = None) -> Written:
    """`report`, also returning the terminal table and the checks (what the CLI prints)."""
    from robustcnn.errors import UsageError
    from robustcnn.fileio import write_json, write_text
    from robustcnn.report.checks import run_checks
    from robustcnn.report.comparisons import comparisons
    from robustcnn.report.load import load_sweep
    from robustcnn.report.render import checks_json, render_html, render_markdown
    from robustcnn.report.tables import headline, text_table
    from robustcnn.results import CHECKS_FILE, COMPARISONS_FILE, REPORT_FILE, SUMMARY_FILE

    data = load_sweep(out_dir)
    table = headline(data.results, data.models, data.manifest)
    found = run_checks(data.results, data.models)
    compared = comparisons(data, baseline)
    html = render_html(data, table, found, compared)
    markdown = render_markdown(data, table, found, compared)
    try:
        write_text(data.out_dir / REPORT_FILE, html)
        write_text(data.out_dir / SUMMARY_FILE, markdown)
        write_json(data.out_dir / CHECKS_FILE, checks_json(found))
        if compared.compared:
            write_text(data.out_dir / COMPARISONS_FILE, compared.frame().to_csv(index=False))
    except OSError as error:
        raise UsageError(f"cannot write the report into {data.out_dir}: {error.strerror or error}") from None
    return Written(data.out_dir / REPORT_FILE, text_table(table) + _unfinished(data.manifest), found)


def _unfinished(manifest: Manifest | None) -> str:
    """A line under the table when the rows are not the whole sweep (a shard ahead of the others, a kill)."""
    status = (manifest.status if manifest is not None else "") or "finished"
    if status == "finished":
        return ""
    return f"\nsweep {status}, not every cell is done: {manifest.message or 'it is still running'}"


def summary_table(source: str | Path | pd.DataFrame, manifest: Manifest | dict | None = None) -> str:
    """A short plain-text headline table (accuracy in %) for the terminal.

    `source` is a sweep directory or a results table (e.g. the sweep's rows so far); with a table, pass
    the manifest (a `Manifest`, or manifest.json's object) to use its reference eps.
    """
    import pandas as pd

    from robustcnn.report.entries import model_entries
    from robustcnn.report.load import SweepData, as_manifest, load_sweep, normalize_results
    from robustcnn.report.tables import headline, text_table

    if isinstance(source, pd.DataFrame):
        results = normalize_results(source, "results table")
        manifest = as_manifest(manifest)
        data = SweepData(Path("."), results, manifest, model_entries(manifest, pd.unique(results["model"])))
    else:
        data = load_sweep(source)
    return text_table(headline(data.results, data.models, data.manifest))


def summary_of_rows(rows: Iterable[Mapping[str, Any]], manifest: Manifest) -> str:
    """`summary_table` of the rows a sweep has just written to results.csv (its own, so already in the form
    `report.load` gives them), without pandas: what the sweep command prints without a report."""
    from robustcnn.report.entries import model_entries
    from robustcnn.report.tables import headline, headline_rows, text_table

    records = headline_rows(rows)
    return text_table(headline(records, model_entries(manifest, (r["model"] for r in records)), manifest))


from robustcnn.callable_module import make_callable  # noqa: E402 - after `report` exists

make_callable(__name__, report)
