"""TensorBoard: the training curves, one point per epoch of each metrics.csv column. `tensorboard --logdir DIR`.

Written through torch's SummaryWriter (torch.utils.tensorboard), which needs the tensorboard package. Into the run
directory's tensorboard/ folder, or with --track-uri DIR into DIR/<run name>, so that one folder collects many
runs and TensorBoard draws them side by side. A sweep's numbers are accuracies over eps, not curves over steps:
a sweep tracks with mlflow.
"""

from __future__ import annotations

from pathlib import Path

from robustcnn.tracking.base import Tracker, TrainingEnd, TrainingStart, epoch_metrics, register

RUN_FOLDER = "tensorboard"  # inside the run directory, without --track-uri


@register("tensorboard")
class TensorBoardTracker(Tracker):
    library, module, extra = "TensorBoard", "tensorboard", "tensorboard"

    def __init__(self, uri: str | None, experiment: str):
        super().__init__(uri, experiment)
        self.require()
        self.folder: Path | None = None  # known once the run starts

    @property
    def where(self) -> str:
        return str(self.folder or self.uri or f"RUN_DIR/{RUN_FOLDER}")

    def start(self, run: TrainingStart) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(self.uri) / run.name if self.uri else run.run_dir / RUN_FOLDER
        # A resumed run writes its whole history again; purge_step 1 hides what an earlier attempt wrote.
        self.writer = SummaryWriter(str(self.folder), purge_step=1 if run.history else None)
        for row in run.history:
            self.epoch(*epoch_metrics(row))

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()  # a curve to watch while training runs

    def finish(self, end: TrainingEnd) -> None:
        self.writer.close()
