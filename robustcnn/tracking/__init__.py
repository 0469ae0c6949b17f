"""Experiment tracking: training curves and sweep results copied to MLflow or TensorBoard.

    python -m robustcnn.train ... --track mlflow            # ./mlruns; --track-uri http://host:5000 for a server
    python -m robustcnn.train ... --track tensorboard       # RUN_DIR/tensorboard
    python -m robustcnn.sweep ... --track mlflow            # one run per model

robustcnn's own files come first: a tracker copies what run.json, metrics.csv, results.csv and manifest.json
hold, after they are written. A backend is one file with a `@register("name")` class (base.py says what it
does); it imports its library only when used, so robustcnn runs without it, and the extras robustcnn[mlflow]
and robustcnn[tensorboard] install them.
"""

from robustcnn.tracking import mlflow_backend, tensorboard_backend  # noqa: F401  (registers the backends)
from robustcnn.tracking.base import (
    TRACKERS,
    Outcome,
    Tracker,
    check_sweep_track,
    parse_track,
    parse_uri,
    tracker_names,
)

__all__ = ["TRACKERS", "Outcome", "Tracker", "check_sweep_track", "parse_track", "parse_uri", "tracker_names"]
