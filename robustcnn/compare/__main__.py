"""python -m robustcnn.compare OLD NEW: every matched row with old / new / difference / p; --fail-if-drop PP gates."""

from __future__ import annotations

import argparse
import math
import sys

from robustcnn.cli import run_main
from robustcnn.errors import EXIT_OK, RunFailed, UsageError

SHOWN_UNMATCHED = 20  # lines of unmatched rows printed; the rest are counted


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m robustcnn.compare",
        description=(
            "Compare two sweeps (or two models of one) on the same images: per matched row the accuracy difference, "
            "its 95%% interval for paired proportions (Newcombe) and McNemar's exact p-value, Holm-adjusted over "
            "each pair of models' rows."
        ),
        epilog="Example: python -m robustcnn.compare reports/last-week reports/today --fail-if-drop 2",
        allow_abbrev=False,
    )
    p.add_argument("old", metavar="OLD", help="the --out directory of the earlier (baseline) sweep")
    p.add_argument("new", metavar="NEW", nargs="?", help="the --out directory of the later sweep (default: OLD)")
    p.add_argument(
        "--models", nargs=2, metavar=("OLD_ID", "NEW_ID"), help="compare these two models (default: same ids)"
    )
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the tests (default 0.05)")
    p.add_argument(
        "--fail-if-drop",
        type=float,
        metavar="PP",
        help="exit 1 when a robust accuracy drops by more than PP percentage points, significantly at --alpha",
    )
    p.add_argument("--csv", metavar="FILE", help="also write the compared rows to FILE (comparisons.csv's columns)")
    return p


def main(argv: list[str]) -> int:
    from robustcnn.compare import compare
    from robustcnn.fileio import write_text

    args = parser().parse_args(argv)
    if args.fail_if_drop is not None and not (math.isfinite(args.fail_if_drop) and args.fail_if_drop >= 0):
        raise UsageError(f"--fail-if-drop {args.fail_if_drop!r} is not allowed; it must be >= 0 percentage points")
    result = compare(args.old, args.new, tuple(args.models) if args.models else None, args.alpha)
    print(table(result))
    if args.csv:
        write_text(args.csv, result.frame().to_csv(index=False))
    if not result.rows:
        reasons = "; ".join(dict.fromkeys(u.reason for u in result.unmatched)) or "no rows"
        raise UsageError(f"nothing matched between {result.old} and {result.new}: {reasons}")
    if args.fail_if_drop is not None:
        gate(result, args.fail_if_drop)
    return EXIT_OK


def gate(result, points: float) -> None:
    drops = result.drops(points)
    if drops:
        worst = drops[0]
        raise RunFailed(
            f"robust accuracy dropped in {len(drops)} row(s), more than {points:g} points at alpha {result.alpha:g}; "
            f"worst: {worst.new_model} {worst.key.label}: {' '.join(_line(worst).split())}"
        )
    print(f"gate passed: no robust accuracy dropped by more than {points:g} points at alpha {result.alpha:g}")


def table(result) -> str:
    lines = [
        f"old: {result.old}   new: {result.new}",
        "difference = new - old in percentage points, [95% interval]; p: McNemar exact, Holm-adjusted per model pair",
    ]
    width = max([len(_name(row)) for row in result.rows] + [5])
    for row in result.rows:
        lines.append(f"{_name(row):<{width}}  {_line(row)}{'  *' if row.significant(result.alpha) else ''}")
    if result.rows:
        lines.append(f"* significant at alpha {result.alpha:g} (Holm-adjusted); the others are not")
    if result.unmatched:
        lines.append(f"not compared ({len(result.unmatched)}):")
        for item in result.unmatched[:SHOWN_UNMATCHED]:
            lines.append(f"  {_models(item)} {item.what}: {item.reason}")
        if len(result.unmatched) > SHOWN_UNMATCHED:
            lines.append(f"  ... and {len(result.unmatched) - SHOWN_UNMATCHED} more")
    return "\n".join(lines)


def _name(row) -> str:
    models = row.new_model if row.old_model == row.new_model else f"{row.old_model} -> {row.new_model}"
    return f"{models}  {row.key.label}"


def _models(item) -> str:
    if item.old_model and item.new_model and item.old_model != item.new_model:
        return f"{item.old_model} -> {item.new_model}"
    return item.old_model or item.new_model or ""


def _line(row) -> str:
    r = row.result
    return (
        f"{r.old_accuracy:7.2%} -> {r.new_accuracy:7.2%}  {100 * r.difference:+6.2f} "
        f"[{100 * r.low:+6.2f}, {100 * r.high:+6.2f}]  p {r.p_value:.2g}  p(Holm) {row.p_holm:.2g}"
    )


def entry() -> None:
    sys.exit(run_main(main, name="robustcnn.compare"))


if __name__ == "__main__":
    entry()
