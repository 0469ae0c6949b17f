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
- Bounds on a residual network: `ibp` and `crown` per image on the zoo's resnet18 (3x32x32, CIFAR-10's
  normalisation; 32x32 crops of scikit-learn's two sample photographs, labelled by the model itself), with random
  weights and after a brief IBP training (BatchNorm frozen at its statistics, as bounds read it), with the share
  each certifies and how many ReLU inputs crown's default memory leaves to intervals. Where auto_LiRPA is
  importable (AUTO_LIRPA_PATH: a folder holding it; it is a reference, not a dependency: README, "Certify")
  the same bounds by auto_LiRPA, its time and its certified share beside ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import robustcnn
from benchmarks.table import Row
from benchmarks.timing import interleaved
from benchmarks.train_speed import stopwatch
from robustcnn.certify.bounds import bounds, certified, crown_plan
from robustcnn.models import ModelConfig, create_model
from robustcnn.models.base import Normalized
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
    rows.extend(_residual_rows(device, min(crown_images, RESNET_CROWN_IMAGES)))
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


DIGITS_IMAGES = 120  # test images of the digits network
DIGITS_EPS = (0.005, 0.01, 0.02)
DIGITS_EPOCHS = 20
RESNET_SHAPE = (3, 32, 32)
RESNET_EPS = 1 / 255  # Linf: CIFAR-10's smallest common radius
RESNET_IBP_IMAGES = 64
RESNET_CROWN_IMAGES = 2  # crown's default batch; ~25 s per image here
IBP_TRAIN_STEPS = 20  # "brief": batches of 32 crops, eps ramped to RESNET_EPS over the first half
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def photo_crops(count: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, 32, 32) crops of scikit-learn's two sample photographs, in [0, 1]: CIFAR-shaped offline data."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255 for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[1] - 32), rng.integers(0, photo.shape[2] - 32)
        crops.append(photo[:, top : top + 32, left : left + 32])
    return torch.stack(crops)


def resnet18(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(ModelConfig("resnet18", *RESNET_SHAPE, 10, CIFAR_MEAN, CIFAR_STD)).eval()


def ibp_trained_resnet18(x: torch.Tensor, steps: int = IBP_TRAIN_STEPS) -> torch.nn.Module:
    """resnet18 after a few IBP-training steps on x labelled by its random self: what certified training does to
    the bounds' width, not a useful classifier. Eval mode throughout: bounds read BatchNorm as fixed statistics."""
    model = resnet18()
    with torch.no_grad():
        y = model(x).argmax(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        index = torch.randint(0, len(x), (32,), generator=torch.Generator().manual_seed(step))
        eps = RESNET_EPS * min(1.0, step / (steps / 2))
        margins = bounds(model, x[index], eps, Norm.LINF, "ibp", y=y[index], num_classes=10, dtype=torch.float32,
                         differentiable=True)  # fmt: skip
        worst = torch.cat([torch.zeros_like(margins.lower[:, :1]), -margins.lower], dim=1)
        loss = F.cross_entropy(worst, torch.zeros_like(y[index])) + F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.requires_grad_(False)


class ResidualBlock(torch.nn.Module):
    """conv-relu-conv plus the identity, then relu: the block of the digits network."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


def digits_residual() -> torch.nn.Module:
    """A small residual CNN on 1x8x8 digits (two identity-shortcut blocks): where CROWN certifies and IBP cannot."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), ResidualBlock(8), ResidualBlock(8),
        torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10),
    )  # fmt: skip
    info = robustcnn.load_dataset("digits", "test").info
    return Normalized(net, tuple(info.mean), tuple(info.std)).eval()


def trained_digits_residual(epochs: int = DIGITS_EPOCHS) -> torch.nn.Module:
    model = digits_residual()
    train = robustcnn.load_dataset("digits", "train")
    x, y = train.images(), train.y
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        for index in torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).split(64):
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class Case:
    """A network, the images it is bounded on (labelled as the benchmark says) and the radii."""

    label: str
    arch: str  # how benchmarks.lirpa_reference rebuilds the network: "resnet18" or "digits-residual"
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: tuple[float, ...]
    crown_images: int  # crown (and auto_LiRPA's CROWN) run on the first this many images
    lirpa_crown: str  # the auto_LiRPA method that computes what robustcnn's crown does on this network


def residual_cases(crown_images: int) -> list[Case]:
    crops = photo_crops(RESNET_IBP_IMAGES)
    cases = []
    for name, model in (("random weights", resnet18()), ("briefly IBP-trained", ibp_trained_resnet18(crops))):
        with torch.no_grad():
            y = model(crops).argmax(1)  # its own predictions: what a proof would keep
        cases.append(Case(f"resnet18 3x32x32 ({name})", "resnet18", model, crops, y, (RESNET_EPS,), crown_images,
                          "CROWN-IBP"))  # fmt: skip  # intervals inside: what crown's default memory affords here
    test = robustcnn.load_dataset("digits", "test").subset(range(DIGITS_IMAGES))
    label = "small residual CNN, digits 1x8x8 (standard training)"
    model = trained_digits_residual()
    cases.append(Case(label, "digits-residual", model, test.images(), test.y, DIGITS_EPS, DIGITS_IMAGES, "CROWN"))
    return cases


def _residual_rows(device: torch.device, crown_images: int) -> list[Row]:
    rows = []
    for case in residual_cases(crown_images):
        model = case.model.to(device).requires_grad_(False)
        _, plan = crown_plan(model, tuple(case.x.shape[1:]))
        for method in ("ibp", "crown"):
            images = len(case.x) if method == "ibp" else case.crown_images
            x, y = case.x[:images].to(device), case.y[:images].to(device)
            started, proven = time.perf_counter(), []
            for eps in case.eps:
                proven.append(int(certified(model, x, y, eps, Norm.LINF, method, 10).sum()))
            seconds = (time.perf_counter() - started) / images / len(case.eps)
            margin = bounds(model, x, case.eps[0], Norm.LINF, method, y=y, num_classes=10).lower.min(1).values
            note = f"{_certified_text(proven, images, case.eps)}; median worst margin bound {margin.median():.4g}"
            if method == "crown":
                note += f"; ReLU inputs left to intervals: {len(plan.intervals_only())}/{len(plan.relaxed)}"
            rows.append(Row("certify", f"{method} per image and eps, {case.label}", seconds, "s", seconds=seconds,
                            repeats=1, note=note))  # fmt: skip
            if method == "crown" and case.lirpa_crown == "CROWN-IBP":
                rows.append(_plain_crown_row(case, model, x, y))
            if os.environ.get("AUTO_LIRPA_PATH"):
                rows.append(_lirpa_row(case, method, images))
    return rows


def _plain_crown_row(case: Case, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Row:
    """crown without slope steps: with every ReLU input left to intervals, this is CROWN-IBP, auto_LiRPA's method."""
    started = time.perf_counter()
    margins = bounds(model, x, case.eps[0], Norm.LINF, "crown", y=y, num_classes=10, alpha_steps=0, proving=True)
    seconds = (time.perf_counter() - started) / len(x)
    note = f"median worst margin bound {margins.lower.min(1).values.median():.4g}"
    return Row("certify", f"crown alpha_steps=0 per image and eps, {case.label}", seconds, "s", seconds=seconds,
               repeats=1, note=note)  # fmt: skip


def _certified_text(proven: list[int], images: int, eps: tuple[float, ...]) -> str:
    radii = " / ".join(f"{e:.4g}" for e in eps)
    return f"certified {' / '.join(map(str, proven))} of {images} at Linf {radii}"


def _lirpa_row(case: Case, method: str, images: int) -> Row:
    """auto_LiRPA's bounds of the same margins in a child process (its own imports, a time limit), beside ours."""
    lirpa_method = {"ibp": "IBP", "crown": case.lirpa_crown}[method]
    with tempfile.TemporaryDirectory(prefix="bench-lirpa-") as tmp:
        state = {key: value.cpu() for key, value in case.model.state_dict().items()}
        payload = {"arch": case.arch, "state": state, "x": case.x[:images].cpu(), "y": case.y[:images].cpu(),
                   "eps": list(case.eps)}  # fmt: skip
        torch.save(payload, Path(tmp) / "case.pt")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.environ["AUTO_LIRPA_PATH"], os.getcwd()])}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.lirpa_reference", str(Path(tmp) / "case.pt"), lirpa_method],
                env=env, capture_output=True, text=True, timeout=LIRPA_TIMEOUT, check=True,
            )  # fmt: skip
            result = json.loads(done.stdout.strip().splitlines()[-1])
            seconds = result["seconds"] / images / len(case.eps)
            proven = _certified_text(result["certified"], images, case.eps)
            note = f"auto_LiRPA {result['version']} {lirpa_method}: {proven}; median worst margin bound "
            note += f"{result['median_margin']:.4g}"
        except subprocess.TimeoutExpired:
            seconds, note = float("nan"), f"auto_LiRPA {lirpa_method}: no bound within {LIRPA_TIMEOUT} s"
        except subprocess.CalledProcessError as error:
            lines = error.stderr.strip().splitlines()
            seconds, note = float("nan"), f"auto_LiRPA {lirpa_method} failed: {lines[-1] if lines else error}"
    return Row("certify", f"auto_LiRPA {method} per image and eps, {case.label}", seconds, "s", seconds=seconds,
               repeats=1, note=note)  # fmt: skip


LIRPA_TIMEOUT = 600  # seconds auto_LiRPA may take on one method and case
