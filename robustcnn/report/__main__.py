"""python -m robustcnn.report SWEEP_DIR: write report.html, summary.md and checks.json, print the headline."""

from __future__ import annotations

import argparse
import sys

from robustcnn.cli import run_main
from robustcnn.errors import EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m robustcnn.report",
        description="Render a sweep directory's results as one self-contained HTML page with sanity checks.",
        epilog="Example: python -m robustcnn.report reports/mnist && xdg-open reports/mnist/report.html",
    )
    p.add_argument("out_dir", metavar="SWEEP_DIR", help="the --out directory of a sweep (holds results.csv)")
    p.add_argument(
        "--baseline", metavar="MODEL", help="compare each model with this one (default: every pair of models)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="list every check, not only warnings and failures")
    return p


def main(argv: list[str]) -> int:
    from robustcnn.report import write_report

    args = parser().parse_args(argv)
    show(write_report(args.out_dir, args.baseline), args.verbose)
    return EXIT_OK


def show(written, verbose: bool = False) -> None:
    """Prints the report's path, the headline table and the checks that need attention."""
    from robustcnn.report.checks import DOCS, Status, counts

    print(written.path)
    print()
    print(written.table)
    print()
    for check in written.checks:
        if verbose or check.status in (Status.FAIL, Status.WARN):
            model = f" [{check.model}]" if check.model else ""
            print(f"{check.status.value.upper():4}  {check.name}{model}: {check.message}")
    tally = counts(written.checks)
    print(f"checks: {', '.join(f'{tally[s.value]} {s.value}' for s in Status)} (explained in {DOCS})")


def entry() -> None:
    sys.exit(run_main(main, name="robustcnn.report"))


if __name__ == "__main__":
    entry()
