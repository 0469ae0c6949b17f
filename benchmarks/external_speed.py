"""What a model from elsewhere costs per attack step: the preprocessing wrapper and converted formats.

Each variant is timed as the unavoidable work of a PGD step: k x (forward + backward with respect to
the input) of one batch, weights frozen, channels-last as the sweep holds every model. The bare network
is robustcnn's demo model without its built-in normalisation, fed inputs that are already normalised:
the least any wrapper can cost. The ONNX and torch.export rows compare the converted module with the
native one it was exported from (normalisation inside both).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import robustcnn
from benchmarks.table import Row
from benchmarks.timing import interleaved
from robustcnn.devices import fast_layout
from robustcnn.models.preprocess import InputRange, Preprocessed, resolve_preprocessing
from robustcnn.runs import load_run

TARGET = 1.05  # the wrapper may cost at most 5% over the bare network per step


def measure(model_path: Path, batch: int, steps: int, device: torch.device, repeats: int) -> list[Row]:
    run = load_run(model_path)
    info = run.dataset
    native = run.model("best", device)  # Normalized: normalisation inside
    test = robustcnn.load_dataset(run.meta["config"]["dataset"], "test")
    x, y = test.images(slice(0, batch)).to(device), test.y[:batch].to(device)  # (batch, C, H, W) in [0, 1]
    channels = info.shape[0]
    dataset = resolve_preprocessing("dataset", InputRange.UNIT, channels, info.mean, info.std)
    byte_range = resolve_preprocessing("dataset", InputRange.BYTE, channels, info.mean, info.std)
    with tempfile.TemporaryDirectory(prefix="bench-external-") as tmp:
        converted = _converted(native, x, Path(tmp), device)  # first: exporting wants the default layout
    variants = {
        "bare": (_hold(native.net, device), (x - native.mean) / native.std),
        "dataset": (_hold(Preprocessed(native.net, dataset), device), x),
        "0-255": (_hold(Preprocessed(native.net, byte_range), device), x),
        "native": (_hold(native, device), x),
        **converted,
    }
    timed = interleaved({name: _steps(m, inputs, y, steps) for name, (m, inputs) in variants.items()}, repeats, device)
    return _rows(timed, steps, batch, run.path.name, repeats)


def _hold(model: nn.Module, device: torch.device) -> nn.Module:
    """As the sweep holds a model: eval mode, on the device, channels-last, weights frozen."""
    return fast_layout(model.to(device).eval(), device).requires_grad_(False)


def _converted(native: nn.Module, x: torch.Tensor, folder: Path, device: torch.device) -> dict:
    """The same model exported to ONNX (converted back with onnx2torch) and to a .pt2 archive."""
    from robustcnn.models.external import build_external
    from robustcnn.models.external.model import Model

    example = x[:2].cpu()
    cpu = native.to("cpu")
    program = torch.export.export(cpu, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, folder / "model.pt2")
    variants = {}
    for name, path in (("onnx", folder / "model.onnx"), ("pt2", folder / "model.pt2")):
        if name == "onnx":
            try:
                torch.onnx.export(cpu, (example,), path, dynamo=False, dynamic_axes={"x": {0: "n"}}, input_names=["x"])
            except ImportError:
                continue  # the onnx extra is not installed: no ONNX row
        built = build_external(Model(str(path)), example.shape[1], 10, (0.0,), (1.0,))
        variants[name] = (_hold(built.module, device), x)
    native.to(x.device)
    return variants


def _steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> Callable[[int], torch.Tensor]:
    def run(_: int = 0) -> torch.Tensor:
        for _ in range(steps):
            x_grad = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_grad), y), x_grad)
        return grad

    run()  # warm-up: first-call allocations and oneDNN primitive creation
    return run


def _rows(timed: dict, steps: int, batch: int, model: str, repeats: int) -> list[Row]:
    what = f"{steps} x (fwd + bwd wrt input), {batch} images, {model}"

    def row(name: str, baseline: str, figure: str, baseline_text: str, target: str = "", note: str = "") -> Row:
        return Row("external", f"{figure} ({what})", timed[name].median / timed[baseline].median, "x", target=target,
                   seconds=timed[name].median, spread=timed[name].spread, baseline=baseline_text,
                   baseline_seconds=timed[baseline].median, baseline_spread=timed[baseline].spread, repeats=repeats,
                   note=note)  # fmt: skip

    bare = "the bare network, inputs normalised beforehand"
    rows = [
        row("dataset", "bare", "Preprocessed(--normalize dataset) vs bare network", bare, f"<= {TARGET:g}"),
        row("0-255", "bare", "Preprocessed(--normalize dataset --input-range 0-255) vs bare", bare, f"<= {TARGET:g}"),
    ]
    native = "the native PyTorch module it was exported from"
    if "onnx" in timed:
        rows.append(row("onnx", "native", "ONNX file converted by onnx2torch vs native", native, note="context"))
    rows.append(row("pt2", "native", "torch.export archive (.pt2) vs native", native, note="context"))
    return rows
