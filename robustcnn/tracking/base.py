"""What a tracking backend is: the `Tracker` base class, the records it is handed, and the TRACKERS registry."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from robustcnn.errors import UsageError, first_line
from robustcnn.registry import Registry

TRACKERS: Registry[type[Tracker]] = Registry("tracker")

TRAIN_EXPERIMENT = "robustcnn-train"  # where training runs go (MLflow experiment)
SWEEP_EXPERIMENT = "robustcnn-sweep"  # where a sweep's runs go: one per model


class Outcome(str, Enum):
    """How a tracked training run ended (MLflow's run statuses)."""

    FINISHED = "FINISHED"  # ran its epochs, or stopped on purpose (run.json's status says which)
    FAILED = "FAILED"  # a non-finite loss
    KILLED = "KILLED"  # interrupted (Ctrl-C, SIGTERM): --resume continues it in a new tracked run


@dataclass(frozen=True)
class TrainingStart:
    """A training run as a tracker sees it when it starts."""

    name: str  # the run directory's name: the tracked run's name
    run_dir: Path
    params: dict[str, str]  # the resolved TrainConfig, each value as `param_text` writes it
    tags: dict[str, str]
    history: tuple[dict[str, float], ...] = ()  # metrics.csv rows a resumed run already has: logged first


@dataclass(frozen=True)
class TrainingEnd:
    outcome: Outcome
    files: tuple[Path, ...]  # run.json and metrics.csv: copied as artifacts
    final: dict[str, float] = field(default_factory=dict)  # run.json's "final" numbers (test accuracy, ...)
    tags: dict[str, str] = field(default_factory=dict)  # what is known only at the end (run.json's status)


@dataclass(frozen=True)
class ModelRecord:
    """One model of a finished sweep, read back from the files the sweep wrote."""

    name: str  # the model id: the tracked run's name
    params: dict[str, str]  # suite, seed, mode, dataset, n, and "<attack>.<parameter>" for each attack
    metrics: dict[str, float]  # accuracy at the headline eps: "accuracy/clean", "accuracy/<attack>", ...
    tags: dict[str, str]
    artifacts: tuple[Path, ...]  # results.csv, manifest.json, report.html, summary.md, checks.json (those there)


class Tracker:
    """A backend, registered under its --track name. Built with --track-uri (None: its own default place) and the
    experiment to log into; it imports its library when built, so robustcnn runs without it.

    Training calls `start`, then `epoch` once per finished epoch (step = the epoch, from 1), then `finish`. A sweep
    calls `model` once per model, after every file is written; only backends with `sweeps` take that.
    """

    name: ClassVar[str]  # its --track name (set by `register`)
    library: ClassVar[str]  # its name for people: "MLflow"
    module: ClassVar[str]  # what to import: a missing one means the extra is not installed
    extra: ClassVar[str]  # pip install 'robustcnn[extra]'
    sweeps: ClassVar[bool] = False  # records a sweep's results, not only training curves

    def __init__(self, uri: str | None, experiment: str):
        self.uri, self.experiment = uri, experiment

    @classmethod
    def require(cls) -> ModuleType:
        """The backend's library, or a one-line UsageError naming the extra that installs it."""
        try:
            return importlib.import_module(cls.module)
        except ImportError:
            raise UsageError(f"--track {cls.name} needs {cls.library}: pip install 'robustcnn[{cls.extra}]'") from None

    @property
    def where(self) -> str:
        """Where it logs, for messages."""
        return str(self.uri)

    def start(self, run: TrainingStart) -> None:
        raise NotImplementedError

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self, end: TrainingEnd) -> None:
        raise NotImplementedError

    def model(self, record: ModelRecord) -> None:
        raise NotImplementedError(f"{self.library} does not record sweeps")


def cannot_start(backend: type[Tracker], uri: str | None, error: Exception) -> UsageError:
    """The one line for a tracker that fails before any work: a server that does not answer, a store it refuses."""
    where = f" at {uri}" if uri else ""
    return UsageError(f"--track {backend.name}: {backend.library}{where} cannot log: {first_line(error)}")


def register(name: str):
    """Class decorator: the backend answers to --track `name`."""

    def add(cls: type[Tracker]) -> type[Tracker]:
        cls.name = name
        return TRACKERS.register(name)(cls)

    return add


def tracker_names() -> list[str]:
    return TRACKERS.names()


def sweep_tracker_names() -> list[str]:
    """The backends that record a sweep's results (the others record training curves only)."""
    return [name for name in TRACKERS.names() if TRACKERS.get(name).sweeps]


def check_sweep_track(track: str) -> type[Tracker]:
    """The backend of a sweep's --track, or a one-line UsageError when it records training curves only."""
    backend = TRACKERS.get(track)
    if not backend.sweeps:
        raise UsageError(
            f"--track {track} records training curves; a sweep's results are logged with --track "
            f"{' or '.join(sweep_tracker_names())}"
        )
    return backend


def parse_track(value: Any) -> str | None:
    """--track NAME, a TRACKERS name; none (or off) turns tracking off, e.g. on --resume of a tracked run."""
    name = str(value).strip().lower()
    if name in ("none", "off"):
        return None
    if name not in TRACKERS:
        raise ValueError(f"choose one of: {', '.join(TRACKERS.names())}, none")
    return name


def parse_uri(value: Any) -> str:
    """--track-uri: a URI or a folder, as text (a Path from the Python API too)."""
    text = str(value).strip()
    if not text:
        raise ValueError("give a tracking URI or a folder")
    return text


def param_text(value: Any) -> str:
    """A parameter's value as the text trackers store: strings as they are, anything else as JSON (null, true,
    [0.1, 0.2]), so a value reads back as it is in run.json and in results.csv's params column."""
    return value if isinstance(value, str) else json.dumps(value)


def metric_key(text: str) -> str:
    """A name trackers accept for a metric or parameter (MLflow: letters, digits and _ - . space / :)."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", text)


def epoch_metrics(row: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """A metrics.csv row as (epoch, every other column as a float)."""
    return int(row["epoch"]), {metric_key(k): float(v) for k, v in row.items() if k != "epoch"}


def existing(paths: Sequence[Path]) -> tuple[Path, ...]:
    return tuple(path for path in paths if path.is_file())
