"""python -m robustcnn.train: parse flags, call `train`, turn user errors into one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from robustcnn.cli import run_main
from robustcnn.config import add_arguments, given_arguments
from robustcnn.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK


def parser() -> argparse.ArgumentParser:
    from robustcnn.data import dataset_names
    from robustcnn.models import model_names
    from robustcnn.train.config import TrainConfig

    p = argparse.ArgumentParser(
        prog="python -m robustcnn.train",
        description=(
            "Train a CNN, optionally adversarially. "
            f"Datasets: {', '.join(dataset_names())} (imagefolder:PATH). Architectures: {', '.join(model_names())}."
        ),
        epilog="Example: python -m robustcnn.train --dataset mnist5k --adv --out runs/mnist-adv",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run where it stopped")
    add_arguments(p, TrainConfig)
    return p


def main(argv: list[str]) -> int:
    from robustcnn.train import TrainConfig, train
    from robustcnn.train.distributed import is_main_process, launch_command

    args = parser().parse_args(argv)
    given = given_arguments(args, TrainConfig)
    try:
        run = train(resume=args.resume, **given)
    except KeyboardInterrupt:
        target = args.resume or given.get("out")
        started = target and (Path(target) / "run.json").is_file()  # else there is nothing to resume yet
        hint = f"; resume with: {launch_command()} --resume {target}" if started else ""
        if is_main_process():  # under torchrun every rank stops together; rank 0 says so once
            print(f"robustcnn.train: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not is_main_process():  # rank 0 prints the summary for the job
        return EXIT_FAILED if run.meta["status"] == "not-robust" else EXIT_OK
    final = run.meta.get("final", {})
    robust = f"\tval_pgd_acc={final['val_pgd_acc']:.4f}" if "val_pgd_acc" in final else ""
    print(f"{run.path}\t{run.meta['status']}\ttest_acc={final.get('test_acc', float('nan')):.4f}{robust}")
    if run.meta["status"] == "not-robust":  # training said why on its last stderr line
        return EXIT_FAILED
    return EXIT_OK


def entry() -> None:
    from robustcnn.train.distributed import is_main_process

    # under torchrun each rank that fails says why on its own line
    name = "robustcnn.train" if is_main_process() else f"robustcnn.train (rank {os.environ['RANK']})"
    sys.exit(run_main(main, name=name))


if __name__ == "__main__":
    entry()
