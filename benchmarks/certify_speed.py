"""What certification costs: bound propagation per image, IBP against the forward passes it stands for, and a
certified-training epoch against a clean one.

- Certification time per 1000 images per eps, for `ibp` and `crown` alone (not crown's ibp-first shortcut,
  which depends on how many images ibp certifies), on smallcnn (the PGD-trained demo model) and on ibpcnn
  (the certified-training architecture; its cost does not depend on the weights). crown is timed on a
  few images, once, and scaled: it costs the same per image whatever the batch (its 20 slope-optimisation steps
  included).
- IBP's pass against 2 clean forward passes of the same batch, its theoretical cost (a centre and a
  radius through every layer), in float32 as training runs it and in float64 as certification does.
- One `--adv-method ibp` epoch against one clean epoch of the same network and data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import robustcnn
from benchmarks.table import Row
from benchmarks.timing import interleaved
from benchmarks.train_speed import stopwatch
from robustcnn.certify.bounds import bounds, certified
from robustcnn.models import ModelConfig, create_model
from robustcnn.threat import Norm
from robustcnn.train.loop import _Trainer

EPS = 0.1  # Linf, the MNIST radius certified training is judged at
CROWN_IMAGES = 8  # crown is slow: timed on this many images and scaled to 1000
DTYPES = (torch.float32, torch.float64)  # IBP as training runs it, and as certification does


def _ibpcnn(device: torch.device) -> torch.nn.Module:
    info = robustcnn.load_dataset("mnist5k", "test").info
    return create_model(ModelConfig.for_dataset("ibpcnn", info)).to(device).eval()


def measure(
    demo_model: Path, device: torch.device, repeats: int, train_size: int | None, crown_images: int = CROWN_IMAGES
) -> list[Row]:
    test = robustcnn.load_dataset("mnist5k", "test")
    x, y = test.images(slice(0, 256)).to(device), test.y[:256].to(device)
    smallcnn = robustcnn.load_model(demo_model, device=str(device), channels_last=False)
    models = {"smallcnn": smallcnn, "ibpcnn": _ibpcnn(device)}
    rows = [
        row for name, model in models.items() for row in _model_rows(name, model, x, y, device, repeats, crown_images)
    ]
    rows.append(_training_epochs(device, train_size))
    return rows


def _model_rows(name: str, model, x, y, device: torch.device, repeats: int, crown_images: int) -> list[Row]:
    model.requires_grad_(False)
    x_few, y_few = x[:crown_images], y[:crown_images]
    certified(
        model, x_few[:1], y_few[:1], EPS, Norm.LINF, "crown", 10
    )  # untimed: the first optimiser imports torch._dynamo (~3 s)
    crown = interleaved({"crown": lambda _: certified(model, x_few, y_few, EPS, Norm.LINF, "crown", 10)}, 1, device)
    variants = {  # interleaved rounds: each ratio comes from the same rounds
        "ibp": lambda _: certified(model, x, y, EPS, Norm.LINF, "ibp", 10),
        "forwards": lambda _: [model(x) for _ in range(2)],
        **{str(d): lambda _, d=d: bounds(model, x, EPS, Norm.LINF, "ibp", dtype=d) for d in DTYPES},
    }
    timed = {**interleaved(variants, repeats, device), **crown}
    rows = []
    for method, images in (("ibp", len(x)), ("crown", crown_images)):
        seconds = timed[method].median * 1000 / images
        rows.append(Row("certify", f"{method} certification, 1000 images, one eps ({name}, Linf {EPS})", seconds,
                        "s", seconds=seconds, spread=timed[method].spread, repeats=len(timed[method].seconds),
                        note=f"timed on {images} images, float64"))  # fmt: skip
    forwards = timed["forwards"]
    for dtype in DTYPES:
        interval = timed[str(dtype)]
        rows.append(Row("certify", f"IBP pass vs 2 clean forward passes ({name}, 256 images, {dtype})",
                        interval.median / forwards.median, "x 2 forwards", seconds=interval.median,
                        spread=interval.spread, baseline="2 clean forwards", baseline_seconds=forwards.median,
                        baseline_spread=forwards.spread, repeats=repeats))  # fmt: skip
    return rows


def _training_epochs(device: torch.device, train_size: int | None) -> Row:
    """The training part of one epoch each of a clean and an IBP-trained ibpcnn (eps at full size at once)."""
    common = {"dataset": "mnist5k", "arch": "ibpcnn", "epochs": 1, "batch_size": 100, "device": str(device)}
    if train_size:
        common["train_size"] = train_size
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="bench-certify-") as tmp:
        for method in ("standard", "ibp"):
            extra = {"adv": True, "adv_method": "ibp", "eps": 0.15, "eps_warmup": 0} if method == "ibp" else {}
            laps: list[float] = []
            with stopwatch(_Trainer, "_epoch", laps, device):
                robustcnn.train(**common, **extra, out=str(Path(tmp) / method))
            seconds[method] = laps[0]
    return Row("certify", "IBP-training epoch vs a clean epoch (ibpcnn, mnist5k, batch 100)",
               seconds["ibp"] / seconds["standard"], "x clean epoch", seconds=seconds["ibp"],
               baseline="clean epoch", baseline_seconds=seconds["standard"], repeats=1,
               note="the training part of each epoch (validation apart); eps 0.15 from the first step")  # fmt: skip
