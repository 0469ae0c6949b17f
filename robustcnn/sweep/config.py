"""`SweepConfig`: every sweep choice in one frozen object, shared by the CLI and `robustcnn.sweep(...)`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from robustcnn.config import BOOL, COUNT, INT, from_mapping, non_negative_float, option
from robustcnn.data.base import FolderOptions, Interpolation
from robustcnn.errors import UsageError
from robustcnn.tracking import check_sweep_track, parse_track, parse_uri


def _weights(value: object) -> str:
    if str(value) not in {"best", "last"}:
        raise ValueError("choose one of: best, last")
    return str(value)


def _interpolation(value: object) -> str:
    return Interpolation.parse(value).value


def _batch_size(value: object) -> int | str:
    from robustcnn.sweep.batching import parse_batch_size

    return parse_batch_size(value)


def _ray_address(value: object) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("choose auto, local or a cluster ADDRESS (host:port; Ray Client ray:// cannot run the sweep)")
    return text


def _out_dir(value: object) -> str:
    text = str(value)
    if not text.strip():
        raise ValueError("give a folder, e.g. --out reports/sweep (an empty one would mean the current directory)")
    if "\0" in text:
        raise ValueError("a path cannot hold a NUL character")
    return text


def _shard(value: object) -> str:
    parse_shard(str(value))
    return str(value).strip()


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N) with 0 <= I < N; None stays None."""
    if text is None:
        return None
    index, _, count = str(text).strip().partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        raise ValueError("write it as I/N, e.g. 0/4 (shards are counted from 0)") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"needs 0 <= I < N, e.g. 0/{max(count, 2)} ... {max(count, 2) - 1}/{max(count, 2)}")
    return index, count


@dataclass(frozen=True)
class SweepConfig:
    suite: str = option("quick", "suite name (attacks/NAME.toml) or path to a .toml file")
    n: int | None = option(None, "test images to attack (a seeded random subset); default: the suite's n", INT)
    out: str = option(
        "reports/sweep",
        "output directory: new, empty, or one a sweep wrote (re-running into it resumes finished cells)",
        _out_dir,
    )
    seed: int = option(0, "seed for the image subset and the attacks' random starts", COUNT)
    device: str = option("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    batch_size: int | str = option(
        "auto",
        "images per batch, or auto: on CUDA the largest whose forward+backward fits, halved (per model); on a CPU "
        "(or MPS) 128, which stays in cache. Any size is halved when a batch runs out of GPU memory",
        _batch_size,
    )
    weights: str = option("best", "which checkpoint of each run directory: best or last", _weights, flag=False)
    dataset: str | None = option(None, "evaluate on this dataset instead of each model's own (same image shape)")
    data_dir: str | None = option(None, "where downloadable datasets live; default ~/.cache/robustcnn/data")
    download: bool = option(False, "download the dataset if its files are missing (needs internet)", BOOL)
    # How an imagefolder:PATH is read (ImageNet-style evaluation; rules in robustcnn/data/imagefolder/__init__.py)
    resize: int | None = option(
        None, "imagefolder: shorter side resized to N pixels (antialiased); default: the weights' own, else none", INT
    )
    crop: int | None = option(None, "imagefolder: centre crop N x N pixels after --resize", INT)
    interpolation: str | None = option(
        None, "imagefolder: --resize resampling: bilinear (default), bicubic, nearest or lanczos", _interpolation
    )
    class_map: str | None = option(
        None, "imagefolder: text (NAME [human name] per line) or JSON {name: index} file giving the class indices"
    )
    labels: str | None = option(None, "imagefolder: NAME,LABEL file for a folder of images without class folders")
    subset: str | None = option(None, "imagefolder: file of image names to evaluate, in its order")
    naive: bool = option(False, "attack every example at every eps (slow; to compare with nested reuse)", BOOL)
    gallery: int = option(8, "adversarial examples per model kept for the report", COUNT)
    probe: int = option(
        50, "examples each white-box attack attacks afresh at every eps, for the report's checks (0: none)", COUNT
    )
    report: bool = option(True, "write report.html when done", BOOL, flag=False)
    baseline: str | None = option(
        None, "MODEL: the report compares each model with this one (default: every pair of models)"
    )
    fail_under: tuple[str, ...] = option((), "gates ATTACK@EPS=ACC", flag=False)
    ray: str | None = option(
        None, "run the attack chains as Ray tasks: auto (a running cluster), ADDRESS, or local (a cluster here)",
        _ray_address, flag=False,
    )  # fmt: skip
    cpus_per_task: int = option(1, "with --ray: CPU cores (torch threads) per task", INT)
    gpus_per_task: float = option(
        0.0, "with --ray: GPUs per task; fractions share a GPU, e.g. 0.25", non_negative_float
    )
    shard: str | None = option(None, "I/N: run only share I (0..N-1) of the cells into a shared --out", _shard)
    track: str | None = option(
        None,
        "when done, log a run per model (suite and attack parameters, headline accuracies, results.csv, report.html, "
        "manifest.json) to mlflow (pip install 'robustcnn[mlflow]'); none: off",
        parse_track,
    )
    track_uri: str | None = option(
        None, "with --track mlflow: a tracking server (http://host:5000) or a folder; default ./mlruns", parse_uri
    )

    @classmethod
    def from_dict(cls, data: dict, where: str = "") -> SweepConfig:
        config = from_mapping(cls, data, where)
        if config.ray and config.shard:
            raise UsageError(f"--ray and --shard {config.shard} do not go together: Ray spreads the cells itself")
        if config.cpus_per_task < 1:
            raise UsageError(f"--cpus-per-task {config.cpus_per_task} must be 1 or more")
        if not config.ray and (config.gpus_per_task or config.cpus_per_task != 1):
            raise UsageError("--cpus-per-task and --gpus-per-task apply to --ray only")
        _check_track(config)
        if config.ray and config.device.strip().lower().startswith("cuda") and not config.gpus_per_task:
            raise UsageError(
                f"--device {config.device} with --ray needs --gpus-per-task (e.g. 1, or 0.25 for four tasks per GPU): "
                "Ray hides the GPUs from tasks that do not ask for one"
            )
        return config

    @property
    def folder(self) -> FolderOptions:
        """How an imagefolder:PATH is read, as the data package takes it."""
        interpolation = Interpolation.parse(self.interpolation) if self.interpolation else None
        return FolderOptions(self.resize, self.crop, interpolation, self.class_map, self.labels, self.subset)

    def replace(self, **changes) -> SweepConfig:
        return dataclasses.replace(self, **changes)

    @property
    def shard_part(self) -> tuple[int, int] | None:
        """--shard I/N as (I, N), or None: parsed by the one rule that checked it."""
        return parse_shard(self.shard)


# Where the results are copied once written, never what they are: kept out of the repeat command.
TRACK_OPTIONS = ("track", "track_uri")


def _check_track(config: SweepConfig) -> None:
    if config.track_uri and not config.track:
        raise UsageError(f"--track-uri {config.track_uri} applies with --track only")
    if config.track:
        check_sweep_track(config.track)
