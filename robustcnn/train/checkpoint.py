"""Saving and restoring training progress in a run directory, atomically and without pickle."""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcnn.errors import UsageError
from robustcnn.fileio import write_json, write_text
from robustcnn.models.external.weights import load_weights_into
from robustcnn.runs import METRICS_FILE, RUN_FILE, STATE_FILE, WEIGHTS, load_tensors, save_tensors

_OPTIM = "optim."
_MODEL = "model."


@dataclass
class Progress:
    """Where training stands; saved inside resume.safetensors so it always matches the weights there."""

    epochs_done: int = 0
    step: int = 0  # optimiser steps taken
    best_epoch: int | None = None
    best_score: float = -1.0  # validation accuracy used to pick the best epoch
    best_sound: bool = False  # the best epoch passed the overfitting guard (robustcnn/overfitting.py)
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per finished epoch
    stopped_early: str | None = None  # why training ended before --epochs, if it did

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def save_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress) -> None:
    state = optimizer.state_dict()
    tensors = {_MODEL + k: v for k, v in model.state_dict().items()}
    scalars = {}
    for param_id, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{_OPTIM}{param_id}.{key}"] = value
            else:
                scalars[f"{param_id}.{key}"] = value
    metadata = {"progress": progress.to_dict(), "param_groups": state["param_groups"], "scalars": scalars}
    save_tensors(run_dir / STATE_FILE, tensors, metadata)


def load_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> Progress:
    path = run_dir / STATE_FILE
    tensors, metadata = load_tensors(path)
    try:
        progress = Progress(**metadata["progress"])
        weights = {k[len(_MODEL) :]: v for k, v in tensors.items() if k.startswith(_MODEL)}
        load_weights_into(model, weights, path)
        optimizer.load_state_dict(_optimizer_state(tensors, metadata))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        if isinstance(error, UsageError):
            raise
        raise UsageError(
            f"checkpoint {path} does not hold a usable training state ({error}); retrain with --overwrite"
        ) from None
    return progress


def _optimizer_state(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> dict[str, Any]:
    slots: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(_OPTIM):
            param_id, key = name[len(_OPTIM) :].split(".", 1)
            slots.setdefault(int(param_id), {})[key] = value
    for name, value in metadata["scalars"].items():
        param_id, key = name.split(".", 1)
        slots.setdefault(int(param_id), {})[key] = value
    return {"state": slots, "param_groups": metadata["param_groups"]}


def save_weights(run_dir: Path, which: str, model: nn.Module, epoch: int) -> None:
    save_tensors(run_dir / WEIGHTS[which], model.state_dict(), {"epoch": epoch})


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text(run_dir / METRICS_FILE, buffer.getvalue())


def write_run(run_dir: Path, meta: dict[str, Any]) -> None:
    write_json(run_dir / RUN_FILE, meta)


def prepare_fresh(out: Path, overwrite: bool) -> None:
    """Creates `out`, refusing to touch anything that is not clearly ours."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(
                f"--out {str(out)!r} already holds files; continue it with --resume {out}, "
                "replace it with --overwrite, or pick another --out"
            )
        if not (out / RUN_FILE).is_file():
            raise UsageError(f"--overwrite refused: {str(out)!r} is not a robustcnn run directory (no {RUN_FILE})")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as error:
        raise UsageError(f"cannot write to --out {str(out)!r}: {error.strerror or error}") from None
