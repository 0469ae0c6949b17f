"""python -m robustcnn.export SWEEP_DIR --per-example | --format robustbench: the sweep as a per-example table or as
RobustBench's model-info JSON; prints the files written."""

from __future__ import annotations

import argparse
import sys

from robustcnn.cli import run_main
from robustcnn.errors import EXIT_OK


def parser() -> argparse.ArgumentParser:
    from robustcnn.export import FORMATS

    p = argparse.ArgumentParser(
        prog="python -m robustcnn.export",
        description=(
            "Export a finished sweep: one row per model, attack, eps and example (its index in the test split, its "
            "file in an image folder, its label, whether it stayed correct), to join with your own records; or "
            "RobustBench's model-info JSON per model and threat model."
        ),
        epilog=(
            "Examples: python -m robustcnn.export reports/mnist --per-example; "
            "python -m robustcnn.export reports/mnist --per-example --format parquet; "
            "python -m robustcnn.export reports/mnist --format robustbench"
        ),
        allow_abbrev=False,
    )
    p.add_argument("out_dir", metavar="SWEEP_DIR", help="the --out directory of a sweep")
    p.add_argument(
        "--per-example", action="store_true", help="one row per model, attack, eps and example (default --format csv)"
    )
    p.add_argument(
        "--format",
        dest="fmt",
        metavar="FORMAT",
        help=f"{', '.join(FORMATS.names())}: csv and parquet (needs robustcnn[parquet]) are per-example tables, "
        "robustbench one JSON per model and threat model",
    )
    p.add_argument(
        "--to",
        metavar="PATH",
        help="write here instead of into the sweep folder: a file for csv or parquet, a folder for robustbench",
    )
    return p


def main(argv: list[str]) -> int:
    from robustcnn.export import export

    args = parser().parse_args(argv)
    written = export(args.out_dir, per_example=args.per_example, fmt=args.fmt, to=args.to)
    for path in written.paths:
        print(path)
    if written.rows:
        print(f"{written.rows} rows", file=sys.stderr)
    for note in written.notes:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK


def entry() -> None:
    sys.exit(run_main(main, name="robustcnn.export"))


if __name__ == "__main__":
    entry()
