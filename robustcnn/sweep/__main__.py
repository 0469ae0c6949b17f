"""python -m robustcnn.sweep RUN_DIR... --suite quick --out reports/x: parse, call `sweep`, print a summary."""

from __future__ import annotations

import argparse
import sys

from robustcnn.cli import run_main
from robustcnn.config import add_arguments, given_arguments
from robustcnn.errors import EXIT_INTERRUPTED, EXIT_OK


def parser() -> argparse.ArgumentParser:
    from robustcnn.attacks import attack_names
    from robustcnn.sweep.config import SweepConfig
    from robustcnn.sweep.suite import suite_names

    p = argparse.ArgumentParser(
        prog="python -m robustcnn.sweep",
        description=(
            "Attack trained models over a range of epsilons through ART; writes results.csv and report.html. "
            f"Suites: {', '.join(suite_names())}. Attacks: {', '.join(attack_names())}."
        ),
        epilog="Example: python -m robustcnn.sweep runs/mnist-std runs/mnist-adv --suite quick --out reports/mnist",
    )
    p.add_argument("models", nargs="+", metavar="RUN_DIR", help="run directories made by python -m robustcnn.train")
    add_arguments(p, SweepConfig)
    p.add_argument("--no-report", dest="report", action="store_false", default=None, help="skip report.html")
    p.add_argument(
        "--fail-under",
        action="append",
        default=None,
        metavar="ATTACK@EPS=ACC",
        help="exit 1 if a model's accuracy under ATTACK at EPS is below ACC (repeatable), e.g. pgd-linf@0.3=0.8",
    )
    return p


def main(argv: list[str]) -> int:
    from robustcnn.sweep import GateFailed, SweepConfig, sweep

    args = parser().parse_args(argv)
    given = given_arguments(args, SweepConfig)
    if "fail_under" in given:
        given["fail_under"] = tuple(given["fail_under"])
    with_report = given.pop("report", True)
    out = given.get("out", SweepConfig.out)
    try:
        sweep(args.models, **given, report=False)  # the report is written here so its summary can be printed
    except GateFailed:
        _summarise(out, with_report)
        raise
    except KeyboardInterrupt:
        print(
            f"robustcnn.sweep: interrupted; finished cells are kept in {out}/cells: re-run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    _summarise(out, with_report)
    return EXIT_OK


def _summarise(out: str, with_report: bool) -> None:
    """The report (when wanted) and the headline table with the checks, in the terminal."""
    from robustcnn.report import summary_table, write_report
    from robustcnn.report.__main__ import show

    if with_report:
        show(write_report(out))
    else:
        print(summary_table(out))


def entry() -> None:
    sys.exit(run_main(main, name="robustcnn.sweep"))


if __name__ == "__main__":
    entry()
