"""--track: what MLflow and TensorBoard hold, read back with their own clients, equals the files robustcnn wrote.

One tiny digits run per tracker and one small sweep of it (about 10 s together); everything is written under
pytest's tmp folders, never into ./mlruns.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import robustcnn
from robustcnn.cli import run_main
from robustcnn.errors import RunFailed, UsageError
from robustcnn.sweep import __main__ as sweep_cli
from robustcnn.train import __main__ as train_cli

pytest.importorskip("mlflow")  # robustcnn[mlflow] and [tensorboard]: in the dev extra, so `make test` has them
pytest.importorskip("tensorboard")
ALLOW = "MLFLOW_ALLOW_FILE_STORE"

TINY = ["--dataset", "digits", "--epochs", "2", "--train-size", "256", "--val-size", "32", "--batch-size", "64"]
SUITE = """
description = "tracking test"
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.1, 0.2]
[[attack]]
name = "pgd-linf"
type = "pgd"
norm = "inf"
eps = [0.1, 0.2]
steps = 3
"""
SWEEP = ["--n", "40", "--probe", "0", "--gallery", "0"]


@pytest.fixture
def reading(monkeypatch):
    """MLflow 3.17+ opens a file store only when asked to: the test's own client asks (robustcnn asks for its calls)."""
    monkeypatch.setenv(ALLOW, "true")


def client(store: Path):
    """MLflow's own client on the file store the test logged into."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(store.as_uri())


def runs(store: Path, experiment: str) -> list:
    mlflow_client = client(store)
    found = mlflow_client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {store}"
    return mlflow_client.search_runs([found.experiment_id])


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A 2-epoch digits run tracked in MLflow, then a sweep of it and a copy (two models), tracked too."""
    root = tmp_path_factory.mktemp("tracking")
    store = root / "store"
    run_dir = root / "run"
    argv = [*TINY, "--out", str(run_dir), "--track", "mlflow", "--track-uri", str(store)]
    before = os.environ.get(ALLOW)
    assert run_main(train_cli.main, argv, name="robustcnn.train") == 0
    assert os.environ.get(ALLOW) == before  # set for robustcnn's calls only
    shutil.copytree(run_dir, root / "copy")
    suite = root / "suite.toml"
    suite.write_text(SUITE)
    out = root / "sweep"
    argv = [str(run_dir), str(root / "copy"), "--suite", str(suite), *SWEEP, "--out", str(out)]
    assert run_main(sweep_cli.main, [*argv, "--track", "mlflow", "--track-uri", str(store)]) == 0
    return store, run_dir, out


def test_training_logs_config_epochs_and_run_json(tracked, reading, tmp_path):
    store, run_dir, _ = tracked
    (run,) = runs(store, "robustcnn-train")
    meta = json.loads((run_dir / "run.json").read_text())
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params == {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta["config"].items()}
    assert run.data.tags["robustcnn.status"] == meta["status"]
    rows = metrics_rows(run_dir)
    assert len(rows) == 2
    mlflow_client = client(store)
    for column in rows[0]:
        if column == "epoch":
            continue
        history = sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run.info.run_id, column))
        assert history == [(int(row["epoch"]), float(row[column])) for row in rows], column
    final = {f"final/{k}": float(v) for k, v in meta["final"].items()}
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("final/")} == final
    assert set(run.data.metrics) == set(rows[0]) - {"epoch"} | set(final)
    copied = Path(mlflow_client.download_artifacts(run.info.run_id, "run.json", str(tmp_path)))
    assert copied.read_bytes() == (run_dir / "run.json").read_bytes()
    assert {a.path for a in mlflow_client.list_artifacts(run.info.run_id)} == {"run.json", "metrics.csv"}


def results_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def accuracy(rows: list[dict[str, str]], model: str, kind: str, attack: str, eps: float) -> float:
    (row,) = [
        r
        for r in rows
        if r["model"] == model and r["kind"] == kind and r["attack"] == attack and np.isclose(float(r["eps"]), eps)
    ]
    return float(row["accuracy"])


def test_sweep_logs_a_run_per_model_with_the_numbers_of_results_csv(tracked, reading):
    store, _, out = tracked
    found = {run.info.run_name: run for run in runs(store, "robustcnn-sweep")}
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(found) == sorted(entry["id"] for entry in manifest["models"]) == ["copy", "run"]
    rows = results_rows(out)
    for entry in manifest["models"]:
        run = found[entry["id"]]
        expected = {"accuracy/clean": accuracy(rows, entry["id"], "clean", "clean", 0.0)}
        for attack, eps in entry["headline_eps"].items():
            kind = "worst-case" if attack.startswith("worst-case") else "attack"
            expected[f"accuracy/{attack}"] = accuracy(rows, entry["id"], kind, attack, eps)
        assert set(entry["headline_eps"]) == {"fgsm", "pgd-linf", "worst-case"}
        assert run.data.metrics == expected
        params = run.data.params
        assert (params["suite"], params["seed"], params["mode"], params["n"]) == ("suite", "0", "nested", "40")
        assert (params["dataset"], params["pgd-linf.steps"], params["fgsm.grid"]) == ("digits", "3", "[0.1, 0.2]")
        assert params["pgd-linf.headline_eps"] == json.dumps(entry["headline_eps"]["pgd-linf"])
        assert run.data.tags["robustcnn.model_sha256"] == entry["sha256"]
        assert run.data.tags["robustcnn.sweep_dir"] == str(out.resolve())
        artifacts = {a.path for a in client(store).list_artifacts(run.info.run_id)}
        assert {"results.csv", "manifest.json", "report.html", "summary.md", "comparisons.csv"} <= artifacts


def test_the_python_api_tracks_after_its_report(tracked, tmp_path, monkeypatch):
    _, run_dir, sweep_out = tracked
    store = tmp_path / "api-store"
    suite = sweep_out.parent / "suite.toml"
    out = tmp_path / "out"
    options = {"suite": str(suite), "n": 20, "probe": 0, "gallery": 0, "out": str(out)}
    robustcnn.sweep([str(run_dir)], **options, track="mlflow", track_uri=str(store))  # report=True: the default
    monkeypatch.setenv(ALLOW, "true")
    (run,) = runs(store, "robustcnn-sweep")
    assert run.data.metrics["accuracy/clean"] == accuracy(results_rows(out), "run", "clean", "clean", 0.0)
    assert "report.html" in {a.path for a in client(store).list_artifacts(run.info.run_id)}


def test_tensorboard_holds_the_training_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    assert run_main(train_cli.main, [*TINY, "--out", str(run_dir), "--track", "tensorboard"]) == 0
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    rows = metrics_rows(run_dir)
    columns = [c for c in rows[0] if c != "epoch"]
    assert sorted(events.Tags()["scalars"]) == sorted(columns)
    for column in columns:
        curve = [(e.step, e.value) for e in events.Scalars(column)]
        assert curve == [(int(r["epoch"]), float(np.float32(r[column]))) for r in rows], column  # float32 in TB


@pytest.mark.parametrize("tool", ["train", "sweep"])
def test_a_missing_library_is_one_line_naming_the_extra_before_any_work(tool, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if robustcnn[mlflow] were not installed
    monkeypatch.chdir(tmp_path)  # where the default ./mlruns would go
    out = tmp_path / "out"
    if tool == "train":
        code = run_main(train_cli.main, [*TINY, "--out", str(out), "--track", "mlflow"], name="robustcnn.train")
    else:
        code = run_main(sweep_cli.main, ["nowhere", "--out", str(out), "--track", "mlflow"], name="robustcnn.sweep")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert err.endswith("--track mlflow needs MLflow: pip install 'robustcnn[mlflow]'")
    assert not out.exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--track", "tensorboard"], "--track tensorboard records training curves; a sweep's results are logged with"),
        (["--track-uri", "somewhere"], "--track-uri somewhere applies with --track only"),
        (["--track", "wandb"], "--track 'wandb' is not allowed: choose one of: mlflow, tensorboard, none"),
    ],
)
def test_sweep_tracking_options_are_checked_first(extra, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(sweep_cli.main, ["nowhere", "--out", str(out), *extra], name="robustcnn.sweep") == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_mlflow_defaults_to_mlruns_in_the_current_directory(tmp_path, monkeypatch):
    from robustcnn.tracking.mlflow_backend import tracking_uri

    monkeypatch.chdir(tmp_path)
    assert tracking_uri(None) == (tmp_path / "mlruns").as_uri()
    assert tracking_uri("store") == (tmp_path / "store").as_uri()
    assert tracking_uri("http://host:5000") == "http://host:5000"


class Broken:
    """A tracker whose server went away."""

    name, library, where = "mlflow", "MLflow", "http://gone:5000"

    def epoch(self, *args):
        raise ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch")

    model = epoch


def test_a_tracker_failing_after_the_sweep_fails_it_in_one_line_with_the_files_kept(tracked):
    from robustcnn.tracking.sweeps import SweepTracking

    _, _, out = tracked
    before = (out / "results.csv").read_bytes()
    with pytest.raises(RunFailed) as raised:
        SweepTracking(Broken()).log(out)
    message = str(raised.value)
    assert "\n" not in message and "Max retries exceeded" in message and "re-run the same command" in message
    assert (out / "results.csv").read_bytes() == before


def test_a_tracker_failing_during_training_warns_once_and_training_goes_on(capsys):
    from robustcnn.tracking.training import TrainingLog

    log = TrainingLog(Broken())
    log.epoch({"epoch": 1, "val_acc": 0.5})
    log.epoch({"epoch": 2, "val_acc": 0.6})  # nothing more is tried
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tracking stopped: MLflow at http://gone:5000 failed" in err
    assert log.tracker is None


def test_a_tracker_that_cannot_start_refuses_the_run_in_one_line(tmp_path):
    from robustcnn.tracking.training import TrainingLog

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # the store cannot be made here
    meta = {"config": {"seed": 0}, "method": "standard"}
    with pytest.raises(UsageError) as raised:
        TrainingLog.connect("mlflow", str(blocker / "store"), tmp_path / "run", meta, [])
    assert str(raised.value).startswith("--track mlflow: MLflow at ") and "\n" not in str(raised.value)


def test_tracking_imports_neither_training_nor_the_sweep():
    """Both call it: it receives what they wrote, and reads a sweep back as the report does."""
    from test_layering import PACKAGE, imports, under

    for path in sorted((PACKAGE / "tracking").glob("*.py")):
        found = imports(path.read_text(encoding="utf-8"), path)
        later = sorted(name for name in found if under(name, ("robustcnn.train", "robustcnn.sweep", "robustcnn.cli")))
        assert not later, f"{path.name} imports {later}"
