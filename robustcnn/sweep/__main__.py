"""python -m robustcnn.sweep MODEL... --suite quick --out reports/x: parse, call `sweep`, print a summary."""

from __future__ import annotations

import argparse
import sys

from robustcnn.cli import run_main
from robustcnn.config import add_arguments, given_arguments
from robustcnn.errors import EXIT_INTERRUPTED, EXIT_OK

MODEL_HELP = (
    "a run directory (made by python -m robustcnn.train), FILE.py:BUILDER, package.module:BUILDER, "
    "torchvision:NAME, timm:NAME, FILE.pt2 (torch.export) or FILE.onnx; SPEC@key=value@... sets the per-model "
    "options below for that model alone (e.g. nets.py:build@weights=nets.pt@normalize=dataset)"
)


def parser() -> argparse.ArgumentParser:
    from robustcnn.attacks import attack_names
    from robustcnn.sweep.config import SweepConfig
    from robustcnn.sweep.suite import suite_names

    p = argparse.ArgumentParser(
        prog="python -m robustcnn.sweep",
        description=(
            "Attack models over a range of epsilons through ART; writes results.csv and report.html. "
            f"Suites: {', '.join(suite_names())}. Attacks: {', '.join(attack_names())}."
        ),
        epilog="Example: python -m robustcnn.sweep runs/mnist-std runs/mnist-adv --suite quick --out reports/mnist",
        allow_abbrev=False,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP)
    add_arguments(p, SweepConfig)
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="auto|ADDRESS|local",
        help="run the attack chains as Ray tasks (needs robustcnn[ray]): auto joins the running cluster (the "
        "default), ADDRESS one at host:port (not ray://), local starts one on this machine",
    )
    p.add_argument("--no-report", dest="report", action="store_false", default=None, help="skip report.html")
    p.add_argument(
        "--fail-under",
        action="append",
        default=None,
        metavar="ATTACK@EPS=ACC",
        help="exit 1 if a model's accuracy under ATTACK at EPS is below ACC (repeatable), e.g. pgd-linf@0.3=0.8",
    )
    _add_model_arguments(p.add_argument_group("per-model options (for every MODEL; SPEC@key=value for one)"))
    return p


def _add_model_arguments(group) -> None:
    group.add_argument("--name", help="model id in the results (default: the run directory or the spec)")
    group.add_argument(
        "--weights",
        help="best or last: which checkpoint of a run directory (default best); a file (.safetensors, .pt, .pth, "
        "a state dict; never unpickled) for builder, torchvision and timm specs",
    )
    group.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="keyword argument for the builder (repeatable; VALUE parsed as JSON, else a string), e.g. num_classes=10",
    )
    group.add_argument(
        "--normalize",
        help="what the model does to pixels: none (default: it takes [0, 1]), dataset (the dataset's mean/std), "
        "imagenet, or MEAN,STD (one each, or one per channel)",
    )
    group.add_argument("--input-range", help="pixel range the model expects: 0-1 (default) or 0-255")
    group.add_argument("--output-index", help="the element of a tuple output that holds the logits")
    group.add_argument("--output-key", help="the key (or attribute) of a dict output that holds the logits")


MODEL_FLAGS = ("name", "weights", "model_arg", "normalize", "input_range", "output_index", "output_key")


def main(argv: list[str]) -> int:
    from robustcnn.sweep.api import GateFailed, sweep_rows
    from robustcnn.sweep.config import SweepConfig
    from robustcnn.sweep.subjects import models_from_command_line

    args = parser().parse_args(argv)
    given = given_arguments(args, SweepConfig)
    given.pop("weights", None)  # a per-model flag: best|last goes back below, a file goes to the models
    if "fail_under" in given:
        given["fail_under"] = tuple(given["fail_under"])
    flags = {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None}
    if flags.get("weights") in ("best", "last"):
        given["weights"] = flags.pop("weights")
    with_report = given.pop("report", True)
    tracking = _tracking(given)
    out = given.get("out", SweepConfig.out)
    models = models_from_command_line(args.models, flags)
    try:
        rows = sweep_rows(models, **given, report=False)  # the report is written here so its summary can be printed
    except GateFailed:
        _summarise(out, with_report, given.get("baseline"), None)
        _log(tracking, out)
        raise
    except KeyboardInterrupt:
        print(
            f"robustcnn.sweep: interrupted; finished cells are kept in {out}/cells: re-run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    _summarise(out, with_report, given.get("baseline"), rows)
    _log(tracking, out)
    return EXIT_OK


def _tracking(given: dict):
    """--track and --track-uri, taken out of what the sweep gets: like the report, the tracker is this command's, so
    that it logs report.html too. Built before the sweep: a missing library is one line before any attack."""
    from robustcnn.sweep.config import TRACK_OPTIONS, SweepConfig

    options = SweepConfig.from_dict({name: given.pop(name) for name in TRACK_OPTIONS if name in given})
    if options.track is None:
        return None
    from robustcnn.tracking.sweeps import SweepTracking

    return SweepTracking.connect(options.track, options.track_uri)


def _log(tracking, out: str) -> None:
    """After the report: each model's run gets report.html too."""
    if tracking is not None:
        from pathlib import Path

        tracking.log(Path(out))


def _summarise(out: str, with_report: bool, baseline: str | None, rows: list[dict] | None) -> None:
    """The report (when wanted) and the headline table with the checks, in the terminal. `rows`: the sweep's results
    rows, when it returned them (the table is then made without reading results.csv back, or importing pandas)."""
    import json
    from pathlib import Path

    from robustcnn.report import summary_of_rows, summary_table, write_report
    from robustcnn.report.__main__ import show
    from robustcnn.results import MANIFEST_FILE, Manifest

    manifest = Manifest.from_json(json.loads((Path(out) / MANIFEST_FILE).read_text()))
    if manifest.status == "partial":  # a shard that finished before the others
        print(f"{out}\tpartial\t{manifest.message}")
        return

    if with_report:
        show(write_report(out, baseline))
    else:
        print(summary_table(out) if rows is None else summary_of_rows(rows, manifest))


def entry() -> None:
    sys.exit(run_main(main, name="robustcnn.sweep"))


if __name__ == "__main__":
    entry()
