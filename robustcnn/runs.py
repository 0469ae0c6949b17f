"""Run directories: what training writes and what the sweep, the report and users read back.

    run.json            everything needed to rebuild and judge the model (config, dataset, versions, metrics)
    best.safetensors    weights of the best epoch (robust validation accuracy for adversarial training)
    last.safetensors    weights after the last finished epoch
    resume.safetensors  weights + optimiser state, to continue exactly where training stopped
    metrics.csv         one row per epoch

Weights are safetensors: loading them can never run code, unlike pickle-based `.pt` files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustcnn.data import DatasetInfo
from robustcnn.devices import fast_layout
from robustcnn.errors import UsageError, first_line
from robustcnn.fileio import atomic_path, read_json, sha256_file
from robustcnn.models import ModelConfig, Normalized, create_model
from robustcnn.models.external.weights import load_weights_into

RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
STATE_FILE = "resume.safetensors"
WEIGHTS = {"best": "best.safetensors", "last": "last.safetensors"}
FORMAT = "robustcnn-run/1"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"robustcnn": json.dumps(metadata)})


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UsageError(
            f"checkpoint {path} does not exist; a run gets {', '.join(WEIGHTS.values())} when its first epoch "
            f"ends: finish it with python -m robustcnn.train --resume {path.parent}"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {}).get("robustcnn", "{}"))
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as error:
        raise UsageError(
            f"checkpoint {path} is not a readable safetensors file ({first_line(error)}); "
            "it may be truncated or corrupt: retrain, or restore it from a copy"
        ) from None


@dataclass(frozen=True)
class Run:
    """A finished (or interrupted) training run, read back from its directory."""

    path: Path
    meta: dict[str, Any]  # the parsed run.json

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def dataset(self) -> DatasetInfo:
        return DatasetInfo.from_dict(self.meta["dataset"])

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.meta["model"])

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return list(self.meta.get("metrics", []))

    def weights_path(self, which: str = "best") -> Path:
        if which not in WEIGHTS:
            raise UsageError(f"unknown weights {which!r}; choose one of: {', '.join(WEIGHTS)}")
        return self.path / WEIGHTS[which]

    def weights_sha256(self, which: str = "best") -> str:
        return sha256_file(self.weights_path(which))

    def weights_epoch(self, which: str = "best") -> int | None:
        """The training epoch the weights file was saved after (from its metadata)."""
        from safetensors import safe_open

        with safe_open(str(self.weights_path(which)), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("robustcnn", "{}")).get("epoch")

    def model(self, which: str = "best", device: str | torch.device = "cpu") -> Normalized:
        tensors, _ = load_tensors(self.weights_path(which))
        model = create_model(self.model_config)
        load_weights_into(model, tensors, self.weights_path(which))
        return model.to(device).eval()


def load_run(path: str | Path) -> Run:
    """Reads run.json and checks it describes a robustcnn run with weights."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"run directory {str(path)!r} does not exist")
    run_file = path / RUN_FILE
    if not run_file.is_file():
        raise UsageError(
            f"{path} is not a robustcnn run directory (no {RUN_FILE}); train one with python -m robustcnn.train"
        )
    try:
        meta = read_json(run_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{run_file} is not valid JSON ({first_line(error)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UsageError(f"{run_file} is not a {FORMAT} file")
    _check_meta(run_file, meta)
    return Run(path, meta)


def _check_meta(run_file: Path, meta: dict[str, Any]) -> None:
    """What a sweep or a resume rebuilds from run.json, checked up front: a damaged file is one clear error."""
    try:
        ModelConfig.from_dict(meta["model"])
        DatasetInfo.from_dict(meta["dataset"])
        if not isinstance(meta["config"], dict):
            raise TypeError("'config' is not an object")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UsageError(
            f"{run_file} is damaged ({type(error).__name__}: {first_line(error)}); it needs the 'model', "
            "'dataset' and 'config' written by python -m robustcnn.train: retrain, or restore it from a copy"
        ) from None


def load_model(
    path: str | Path, weights: str = "best", device: str | torch.device = "cpu", channels_last: bool = True
) -> Normalized:
    """The trained model, in eval mode, taking (N, C, H, W) pixels in [0, 1] and returning logits.

    Its conv weights are channels-last, the layout the sweep attacks in (faster attack steps than PyTorch's
    default layout; robustcnn.devices.fast_layout). Inputs need no change. Saving
    `state_dict()` with safetensors wants contiguous tensors: `channels_last=False`, or `.contiguous()` each.
    """
    model = load_run(path).model(weights, device)
    return fast_layout(model, torch.device(device)) if channels_last else model
