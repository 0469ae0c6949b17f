"""The models a sweep attacks, each with its test subset and ART wrapper, checked before any attack runs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustcnn.attacks import Target
from robustcnn.attacks.art import art_classifier
from robustcnn.data import DatasetInfo, ImageSet, dataset_info, load_dataset
from robustcnn.devices import fast_layout
from robustcnn.errors import UsageError
from robustcnn.models import Normalized
from robustcnn.runs import Run, load_run
from robustcnn.sweep.config import SweepConfig


@dataclass
class Subject:
    id: str  # unique name in this sweep (the run directory's name)
    run: Run
    sha256: str  # of the weights attacked
    model: Normalized  # eval mode, on the sweep's device
    info: DatasetInfo  # the dataset evaluated on
    data: ImageSet  # the n test images
    subset: np.ndarray  # their indices in the test split
    target: Target

    @property
    def subset_hash(self) -> str:
        return hashlib.sha256(self.subset.astype(np.int64).tobytes()).hexdigest()[:16]


def default_batch_size(device: torch.device) -> int:
    """Measured: on CPUs 32-128 keeps the working set in cache (one batch of 1000 is 2x slower); GPUs want more."""
    return 1024 if device.type == "cuda" else 128


def unique_ids(paths: list[Path]) -> list[str]:
    names = [p.name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def test_subset(size: int, n: int, seed: int, dataset: str) -> np.ndarray:
    if n > size:
        raise UsageError(f"--n {n} is larger than the {size} test images of {dataset}; use --n {size} or less")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[:n].numpy()


def load_subjects(models: list, config: SweepConfig, n_default: int | None, device: torch.device) -> list[Subject]:
    runs = [m if isinstance(m, Run) else load_run(m) for m in models]
    if not runs:
        raise UsageError("no models given; pass one or more run directories (made by python -m robustcnn.train)")
    ids = unique_ids([r.path for r in runs])
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise UsageError(f"run directory {duplicate!r} is given twice")
    batch_size = config.batch_size or default_batch_size(device)
    return [_subject(run, name, config, n_default, device, batch_size) for run, name in zip(runs, ids, strict=True)]


def _subject(run: Run, name: str, config: SweepConfig, n_default, device, batch_size: int) -> Subject:
    model_info = run.dataset
    dataset = config.dataset or run.meta["config"]["dataset"]
    info = dataset_info(dataset, config.data_dir, config.download)
    if (info.shape, info.num_classes) != (model_info.shape, model_info.num_classes):
        raise UsageError(
            f"model {name!r} takes {_describe(model_info)} but dataset {dataset!r} has {_describe(info)}; "
            "pick a dataset of the same shape with --dataset"
        )
    test = load_dataset(dataset, "test", config.data_dir, config.download)
    subset = test_subset(len(test), config.n or n_default or min(len(test), 1000), config.seed, dataset)
    weights = run.weights_path(config.weights)
    model = fast_layout(run.model(config.weights, device), device).requires_grad_(False)  # input gradients only
    classifier = art_classifier(model, info.shape, info.num_classes, device)
    target = Target(classifier, model, device, batch_size, info.num_classes)
    return Subject(name, run, _sha256(weights), model, info, test.subset(subset), subset, target)


def _describe(info: DatasetInfo) -> str:
    channels, height, width = info.shape
    return f"{channels}x{height}x{width} images in {info.num_classes} classes"


def _sha256(path: Path) -> str:
    from robustcnn.fileio import sha256_file

    return sha256_file(path)
