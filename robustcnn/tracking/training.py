"""What the training loop talks to: `TrainingLog`, the tracker of --track (rank 0's), or one that logs nothing.

Training's own files come first: run.json and metrics.csv are written before each call here, and the tracker
copies them. A tracker that cannot start stops the run before its first epoch (one line, exit 2); one that fails
later costs one warning line and logs nothing more, and training goes on: its files hold everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robustcnn.console import say
from robustcnn.errors import UsageError, first_line
from robustcnn.tracking.base import (
    TRACKERS,
    TRAIN_EXPERIMENT,
    Outcome,
    Tracker,
    TrainingEnd,
    TrainingStart,
    cannot_start,
    epoch_metrics,
    existing,
    metric_key,
    param_text,
)


class TrainingLog:
    def __init__(self, tracker: Tracker | None = None):
        self.tracker = tracker  # None: nothing is logged (no --track, a rank other than 0, or it failed)

    @classmethod
    def connect(
        cls, track: str, uri: str | None, run_dir: Path, meta: dict[str, Any], history: Sequence[dict]
    ) -> TrainingLog:
        """Starts the tracked run: `meta` is run.json's content, `history` the epochs a resumed run already has."""
        start = TrainingStart(
            name=run_dir.resolve().name,
            run_dir=run_dir,
            params={metric_key(k): param_text(v) for k, v in meta["config"].items()},
            tags={"robustcnn.run_dir": str(run_dir.resolve()), "robustcnn.method": str(meta["method"])},
            history=tuple(history),
        )
        backend = TRACKERS.get(track)
        try:
            tracker = backend(uri, TRAIN_EXPERIMENT)
            tracker.start(start)
        except UsageError:
            raise
        except Exception as error:  # the library's own errors, before the first epoch
            raise cannot_start(backend, uri, error) from None
        return cls(tracker)

    def epoch(self, row: dict[str, Any]) -> None:
        """One metrics.csv row, after it is written."""
        self._call(lambda tracker: tracker.epoch(*epoch_metrics(row)))

    def finish(self, outcome: Outcome, files: Sequence[Path], meta: dict[str, Any]) -> None:
        """After run.json's last write: its final numbers and status, and the files as artifacts."""
        numbers = {k: v for k, v in meta.get("final", {}).items() if isinstance(v, (int, float))}
        final = {k: float(v) for k, v in numbers.items()}
        end = TrainingEnd(outcome, existing(files), final, {"robustcnn.status": str(meta["status"])})
        self._call(lambda tracker: tracker.finish(end))
        self.tracker = None

    def _call(self, action: Callable[[Tracker], None]) -> None:
        if self.tracker is None:
            return
        try:
            action(self.tracker)
        except Exception as error:  # a tracker is a copy: losing it must not lose the training
            say(
                f"tracking stopped: {self.tracker.library} at {self.tracker.where} failed ({first_line(error)}); "
                "training goes on, and its run directory holds every number"
            )
            self.tracker = None


def require(track: str | None) -> None:
    """Fails fast, before any work, when --track's library is not installed."""
    if track is not None:
        TRACKERS.get(track).require()
