"""MLflow (https://mlflow.org), through its client: one run per training run, one run per model of a sweep.

The default store is ./mlruns, MLflow's file store: a folder beside the work, no server. MLflow 3.17 and later
refuse a file store unless MLFLOW_ALLOW_FILE_STORE=true (they prefer a database now), so robustcnn sets that
around its own calls to a file store and puts it back after each, unless the variable is already set. --track-uri
takes a tracking server (http://host:5000), a database (sqlite:///mlflow.db, with the full `mlflow` package) or
another folder. The client is MLflow's own `MlflowClient`: no active run in MLflow's global state.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from robustcnn.tracking.base import ModelRecord, Outcome, Tracker, TrainingEnd, TrainingStart, epoch_metrics, register

DEFAULT_FOLDER = "mlruns"  # relative to the current directory, as MLflow's own default was
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
MAX_PARAMS = 100  # per log_batch call (MLflow's limit; metrics: 1000, so one call holds an epoch)


def tracking_uri(uri: str | None) -> str:
    """--track-uri as MLflow takes it: a URI with a scheme as given; a folder (default ./mlruns) as a file: URI."""
    if uri and len(urlparse(uri).scheme) > 1:  # one letter is a Windows drive, not a scheme
        return uri
    return Path(uri or DEFAULT_FOLDER).resolve().as_uri()


@contextlib.contextmanager
def file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow's file store, allowed for the calls inside only (see the module's docstring)."""
    if urlparse(uri).scheme != "file" or ALLOW_FILE_STORE in os.environ:
        yield
        return
    os.environ[ALLOW_FILE_STORE] = "true"
    try:
        yield
    finally:
        os.environ.pop(ALLOW_FILE_STORE, None)


def _now_ms() -> int:
    return int(time.time() * 1000)


@register("mlflow")
class MlflowTracker(Tracker):
    library, module, extra, sweeps = "MLflow", "mlflow", "mlflow", True

    def __init__(self, uri: str | None, experiment: str):
        super().__init__(tracking_uri(uri), experiment)
        self.require()
        from mlflow.tracking import MlflowClient

        with file_store_allowed(self.uri):
            self.client = MlflowClient(self.uri)
            self.experiment_id = self._experiment(experiment)
        self.run_id: str | None = None  # the training run being logged

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another process logging into the same store made it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run: TrainingStart) -> None:
        with file_store_allowed(self.uri):
            self.run_id = self.client.create_run(self.experiment_id, run_name=run.name, tags=run.tags).info.run_id
            self._params(self.run_id, run.params)
        for row in run.history:
            self.epoch(*epoch_metrics(row))

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        with file_store_allowed(self.uri):
            self._metrics(self.run_id, metrics, epoch)

    def finish(self, end: TrainingEnd) -> None:
        with file_store_allowed(self.uri):
            self._metrics(self.run_id, {f"final/{k}": v for k, v in end.final.items()}, 0)
            self._close(self.run_id, end.tags, end.files, end.outcome)

    def model(self, record: ModelRecord) -> None:
        with file_store_allowed(self.uri):
            run_id = self.client.create_run(self.experiment_id, run_name=record.name, tags=record.tags).info.run_id
            self._params(run_id, record.params)
            self._metrics(run_id, record.metrics, 0)
            self._close(run_id, {}, record.artifacts, Outcome.FINISHED)

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(run_id, params=items[start : start + MAX_PARAMS])

    def _metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if metrics:
            now = _now_ms()
            self.client.log_batch(run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()])

    def _close(self, run_id: str, tags: dict[str, str], files: tuple[Path, ...], outcome: Outcome) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        for path in files:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, outcome.value)
