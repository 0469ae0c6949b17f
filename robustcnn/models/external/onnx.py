"""`model.onnx`: converted to a PyTorch module with onnx2torch, so gradients flow and white-box attacks work.

onnx2torch was picked by trying it on our torch: a `torch.onnx`-exported CNN (conv, BN, pooling, dropout,
linear) converts with logits within 5e-6 of onnxruntime's. A conversion can still be wrong for an
operator it handles differently, so where onnxruntime is installed `check_against_onnxruntime` compares the
two on real images before any attack, and a model that disagrees is refused. Whatever onnx, onnx2torch or
onnxruntime cannot read (a newer `ir_version`, a damaged file) is one UsageError line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustcnn.errors import UsageError, last_line
from robustcnn.fileio import sha256_file
from robustcnn.models.external import LOADERS, Built, Loader, missing_extra
from robustcnn.models.external.batching import FixedBatch, fixed_batch_note
from robustcnn.models.external.model import Model

TOLERANCE = 1e-3  # largest |logit difference| allowed, relative to the logits' scale (max(1, max |logit|))


@LOADERS.register("onnx")
class Onnx(Loader):
    takes_weights = False  # the file carries them

    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec.endswith(".onnx")

    def build(self, model: Model, num_classes: int, download: bool) -> Built:
        path = Path(str(model.source)).expanduser()
        if not path.is_file():
            raise UsageError(f"model file {str(path)!r} does not exist")
        if model.model_args:
            raise UsageError(f"{path} is an ONNX file: it takes no --model-arg")
        try:
            import onnx
            from onnx2torch import convert
        except ImportError as error:
            raise missing_extra(str(path), "onnx", error) from None
        try:
            graph = onnx.load(str(path))
            _check_ir_version(graph, path, onnx.IR_VERSION)
            net = convert(graph)
        except UsageError:
            raise
        except Exception as error:  # onnx2torch raises NotImplementedError, KeyError, ... for what it cannot convert
            hint = (
                "; onnx2torch knows most operators up to opset 17: from PyTorch, export with "
                "torch.onnx.export(..., dynamo=False, opset_version=17)"
                if isinstance(error, NotImplementedError)
                else ""
            )
            raise UsageError(f"cannot convert {path} to PyTorch (onnx2torch): {last_line(error)}{hint}") from None
        size = _static_batch(graph)
        if size is None:
            return Built(net, f"onnx:{path.name}", sha256_file(path))
        return Built(
            FixedBatch(net, size), f"onnx:{path.name}", sha256_file(path), (fixed_batch_note(str(path), size),)
        )


def _check_ir_version(graph, path: Path, known: int) -> None:
    if not 0 < graph.ir_version <= known:
        raise UsageError(
            f"{path} has ONNX ir_version {graph.ir_version}; this onnx reads 1..{known}: export it with the "
            "installed torch.onnx, or upgrade onnx and onnxruntime"
        )


def _static_batch(graph) -> int | None:
    initializers = {i.name for i in graph.graph.initializer}
    for value in graph.graph.input:
        if value.name not in initializers:  # old exports list the weights as inputs too
            dims = value.type.tensor_type.shape.dim
            return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return None


def check_against_onnxruntime(path: Path, net: torch.nn.Module, x: torch.Tensor) -> float | None:
    """Max |logit difference| between the converted module and onnxruntime on x (the model's own input
    units: after preprocessing); raises UsageError beyond TOLERANCE; None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    size = net.size if isinstance(net, FixedBatch) else None
    batch = x[:size] if size else x
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        expected = session.run(None, {name: batch.detach().cpu().numpy().astype(np.float32)})[0]
    except Exception as error:  # onnxruntime's Fail, InvalidGraph, InvalidArgument ... are not OSError/ValueError
        raise UsageError(f"onnxruntime cannot run {path}: {last_line(error)}") from None
    with torch.no_grad():
        got = net(batch)
    got = (got[0] if isinstance(got, (tuple, list)) else got).detach().cpu().float().numpy()
    if got.shape != expected.shape:
        raise UsageError(f"{path}: converted output shape {got.shape} differs from onnxruntime's {expected.shape}")
    gap = float(np.abs(got - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    if gap > TOLERANCE * scale:
        raise UsageError(
            f"{path}: the converted model disagrees with onnxruntime (max logit difference {gap:.3g}, allowed "
            f"{TOLERANCE * scale:.3g}); refused: attacks on it would not measure the ONNX model"
        )
    return gap
