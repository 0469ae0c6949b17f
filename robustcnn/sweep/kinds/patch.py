"""patch: one universal patch optimised on training images, pasted at several scales (`PatchAttack`).

One cell for the whole grid of scales (patch side / image side; no eps, so no headline, worst case or nesting).
The patch is optimised on training images so the test images it is judged on stay unseen; a Ray task is handed
those images (`ray_payload`) so workers need no data files. Once the model is done, the patch is saved as a PNG
(`after`) for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustcnn.data import DatasetInfo
from robustcnn.errors import UsageError
from robustcnn.results import patch_file
from robustcnn.sweep import cells
from robustcnn.sweep.kinds.base import Kind, Runner, Spec, register
from robustcnn.sweep.store import Cell, Expected
from robustcnn.sweep.subjects import Subject


@register
class Patch(Kind):
    name = "patch"
    axis = "scale"

    def check_data(self, spec: Spec, info: DatasetInfo) -> None:
        """The target class must be one of the data's, and the smallest patch at least one pixel wide."""
        where = f"attack {spec.name!r}: "
        target = spec.params.target
        if target >= info.num_classes:
            raise UsageError(
                f"{where}target = {target} is not a class of {info.name}; choose 0..{info.num_classes - 1}"
            )
        side, smallest = min(info.shape[1:]), min(spec.scales)
        if smallest * side < 1:
            raise UsageError(
                f"{where}scale {smallest:g} makes a patch of {smallest * side:.2g} pixels on the {side}-pixel "
                f"images of {info.name}; scales must be at least 1/{side} = {1 / side:.3g}"
            )

    def run(self, runner: Runner, subject: Subject, spec: Spec, attack: Any) -> None:
        examples, _ = runner.inputs[subject.id]
        scales = runner.grids[subject.id][spec.name]

        def compute() -> Cell:
            x_train, y_train = training_images(runner, subject, spec)
            goal = spec.params.target
            flags, success, patch = cells.patch(attack, subject.target, examples, x_train, y_train, scales, goal)
            values = [{"scale": s, "target_success": t} for s, t in zip(scales, success, strict=True)]
            return Cell(values, flags, {"patch": patch})

        expected = Expected(len(examples), "scale", scales, {"patch": tuple(subject.info.shape)})
        parts = {"attack": spec.describe(), "scales": list(scales)}
        runner.cell(subject, spec, self.row_kind, parts, compute, expected)

    def ray_payload(self, runner: Runner, subject: Subject, spec: Spec) -> tuple[np.ndarray, np.ndarray]:
        return training_images(runner, subject, spec)

    def after(self, out: Path, subject: Subject, spec: Spec, cell: Cell) -> None:
        from PIL import Image

        from robustcnn.fileio import atomic_path

        path = out / patch_file(subject.id, spec.name)
        path.parent.mkdir(exist_ok=True)
        pixels = (np.clip(cell.extra["patch"], 0, 1) * 255).round().astype(np.uint8)  # (C, H, W)
        image = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")


def training_images(runner: Runner, subject: Subject, spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """The images the patch is optimised on: x (k, C, H, W) float32 in [0, 1], y (k,); a seeded choice of the
    training split, or, for test data only (npz without x_train), of the test images this sweep does not judge."""
    if (subject.id, spec.name) in runner.handed:  # a Ray task: read-only in the object store, so copied
        x, y = runner.handed[subject.id, spec.name]
        return x.copy(), y.copy()
    from robustcnn.data import load_dataset, split_labels

    config = runner.config
    info = subject.info
    split = "train" if info.has_train else "test"
    pool = np.arange(len(split_labels(info.name, split, config.data_dir, config.download, info.folder)))
    if not info.has_train:
        pool = np.setdiff1d(pool, subject.subset)
        if not len(pool):
            raise UsageError(
                f"{info.name} has no training images and --n takes every test image: the patch needs "
                "images it is not judged on; lower --n, or add x_train / y_train to the file"
            )
    count = min(spec.params.train_images, len(pool))
    index = torch.randperm(len(pool), generator=torch.Generator().manual_seed(config.seed))[:count]
    part = load_dataset(info.name, split, config.data_dir, config.download, info.folder, pool[index.numpy()])
    return part.images().numpy(), part.y.numpy()
