"""Which bounding step each operator of a traced graph becomes: one `@lowers` function per ATen operator.

A graph from torch.export names every operation by its ATen operator (`aten.conv2d`, `aten.add`, ...), whatever
the model was written in: nn.Module layers, functional calls, torchvision, timm, onnx2torch's modules, a `.pt2`
archive. Arguments that do not depend on the image (weights, statistics, shapes) are constants by then, so a
lowering reads them as tensors; the image-dependent ones are `Var`s. A lowering returns the `Lowered` step and its
inputs, a `Var` when the operator passes its input through (dropout in eval, clone), or a tuple of those for an
operator with several outputs (None where an output cannot be bounded). Anything else is refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from robustcnn.certify import steps
from robustcnn.errors import UsageError


@dataclass(frozen=True)
class Var:
    """A value that depends on the image: index into the graph's values (0 is the image)."""

    index: int


@dataclass(frozen=True)
class Lowered:
    step: Any  # steps.Affine | Relu | MaxPool | Sum | Cat
    inputs: tuple[Var, ...]


@dataclass(frozen=True)
class Call:
    """One operator call of the graph: its arguments by name (schema defaults filled in), the shapes of one example's
    values (without the batch dimension) and the node's name, for messages."""

    node: str
    op: str  # e.g. "aten.conv2d"
    args: dict[str, Any]
    shapes: Callable[[Var], tuple[int, ...]]
    out_shape: tuple[int, ...]

    def var(self, name: str) -> Var:
        value = self.args[name]
        if not isinstance(value, Var):
            raise self.refuse(f"its {name!r} does not depend on the image")
        return value

    def constant(self, name: str) -> Any:
        value = self.args.get(name)
        if isinstance(value, Var) or (isinstance(value, (list, tuple)) and any(isinstance(v, Var) for v in value)):
            raise self.refuse(f"its {name!r} depends on the image (only one operand may)")
        return value

    def refuse(self, why: str) -> UsageError:
        return UsageError(f"certified bounds cannot bound {self.op} (node {self.node!r}): {why}")


LOWERINGS: dict[str, Callable[[Call], Any]] = {}


def lowers(*ops: str) -> Callable:
    def register(function: Callable[[Call], Any]) -> Callable[[Call], Any]:
        for op in ops:
            if op in LOWERINGS:
                raise RuntimeError(f"operator {op} is lowered twice")
            LOWERINGS[op] = function
        return function

    return register


def supported_ops() -> list[str]:
    return sorted(op.removeprefix("aten.") for op in LOWERINGS)


# --- layers ------------------------------------------------------------------------------------------


@lowers("aten.conv2d", "aten.convolution", "aten._convolution")
def _conv(call: Call) -> Lowered:
    if call.constant("transposed") or len(call.constant("weight").shape) != 4:
        raise call.refuse("only 2-d convolutions that are not transposed are bounded")
    weight, dilation = call.constant("weight"), _pair(call.constant("dilation"))
    padding = call.constant("padding")
    if isinstance(padding, str):  # conv2d.padding: 'valid' or 'same' (stride 1)
        padding = (0, 0) if padding == "valid" else _same_padding(call, weight.shape[2:], dilation)
    settings = {"stride": _pair(call.constant("stride")), "padding": _pair(padding), "dilation": dilation}
    step = steps.conv(weight, call.constant("bias"), **settings, groups=call.constant("groups"))
    return Lowered(step, (call.var("input"),))


def _same_padding(call: Call, kernel: torch.Size, dilation: tuple[int, int]) -> tuple[int, int]:
    total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    if any(t % 2 for t in total):
        raise call.refuse("padding='same' with an even kernel pads unevenly")
    return (total[0] // 2, total[1] // 2)


@lowers("aten.linear")
def _linear(call: Call) -> Lowered:
    return Lowered(steps.dense(call.constant("weight"), call.constant("bias")), (_flat_var(call, "input"),))


@lowers("aten.addmm")
def _addmm(call: Call) -> Lowered:  # beta * self + alpha * (mat1 @ mat2): a linear layer written out
    weight = call.constant("mat2").T * call.constant("alpha")
    bias = torch.as_tensor(call.constant("self")) * call.constant("beta")
    if bias.dim() > 2 or (bias.dim() == 2 and bias.shape[0] != 1):
        raise call.refuse("its added term differs from example to example")
    return Lowered(steps.dense(weight, bias.broadcast_to((1, len(weight))).reshape(-1)), (_flat_var(call, "mat1"),))


@lowers("aten.mm", "aten.matmul")
def _matmul(call: Call) -> Lowered:
    other = call.constant("other" if "other" in call.args else "mat2")
    if other.dim() != 2:
        raise call.refuse("only a product with a constant matrix is bounded")
    return Lowered(steps.dense(other.T, None), (_flat_var(call, "self"),))


def _flat_var(call: Call, name: str) -> Var:
    var = call.var(name)
    if len(call.shapes(var)) != 1:
        raise call.refuse("only a linear layer on flat features (one dimension per example) is bounded")
    return var


@lowers("aten.batch_norm", "aten._native_batch_norm_legit_no_training", "aten._native_batch_norm_legit")
def _batch_norm(call: Call) -> Any:
    if call.args.get("training", False) or call.op == "aten._native_batch_norm_legit":
        raise UsageError(
            f"BatchNorm in train mode (node {call.node!r}) normalises with each batch's statistics, which bounds "
            "do not cover: put the model in eval mode (export it after model.eval())"
        )
    mean, var = call.constant("running_mean"), call.constant("running_var")
    if mean is None or var is None:
        raise call.refuse("BatchNorm without running statistics")
    step = steps.batch_norm(mean, var, call.constant("weight"), call.constant("bias"), call.constant("eps"))
    lowered = Lowered(step, (call.var("input"),))
    return lowered if call.op == "aten.batch_norm" else (lowered, None, None)  # (out, mean, invstd)


# --- activations and pooling ------------------------------------------------------------------------


@lowers("aten.relu", "aten.relu_")
def _relu(call: Call) -> Lowered:
    return Lowered(steps.Relu(), (call.var("self"),))


@lowers("aten.clamp_min", "aten.clamp")
def _clamp(call: Call) -> Lowered:
    if call.constant("min") != 0 or call.args.get("max") is not None:
        raise call.refuse("only clamp(min=0), a ReLU, is bounded")
    return _relu(call)


@lowers("aten.max_pool2d", "aten.max_pool2d_with_indices")
def _max_pool(call: Call) -> Any:
    kernel = _pair(call.constant("kernel_size"))
    stride = _pair(call.constant("stride") or kernel)
    step = steps.MaxPool(
        kernel, stride, _pair(call.constant("padding")), _pair(call.constant("dilation")), call.constant("ceil_mode")
    )
    lowered = Lowered(step, (call.var("self"),))
    return lowered if call.op == "aten.max_pool2d" else (lowered, None)  # the indices are not bounded


@lowers("aten.avg_pool2d")
def _avg_pool(call: Call) -> Lowered:
    kernel = _pair(call.constant("kernel_size"))
    settings = {
        "kernel_size": kernel, "stride": _pair(call.constant("stride") or kernel),
        "padding": _pair(call.constant("padding")), "ceil_mode": call.constant("ceil_mode"),
        "count_include_pad": call.constant("count_include_pad"), "divisor_override": call.constant("divisor_override"),
    }  # fmt: skip
    return Lowered(steps.positive(lambda t: torch.nn.functional.avg_pool2d(t, **settings)), (call.var("self"),))


@lowers("aten.adaptive_avg_pool2d", "aten._adaptive_avg_pool2d")
def _adaptive_avg_pool(call: Call) -> Lowered:
    size = tuple(call.constant("output_size"))
    return Lowered(steps.positive(lambda t: torch.nn.functional.adaptive_avg_pool2d(t, size)), (call.var("self"),))


@lowers("aten.mean", "aten.sum")
def _reduce(call: Call) -> Lowered:
    var = call.var("self")
    dims = _example_dims(call, call.constant("dim"), len(call.shapes(var)))
    keep, reduce = bool(call.constant("keepdim")), torch.mean if call.op == "aten.mean" else torch.sum
    return Lowered(steps.positive(lambda t: reduce(t, dim=dims, keepdim=keep)), (var,))


def _example_dims(call: Call, dims: Any, rank: int) -> tuple[int, ...]:
    """Dimensions of the batched tensor (rank + 1 of them) as negative indices, so that they also name the same
    dimension of a tensor with more leading dimensions; refuses the batch dimension."""
    listed = [dims] if isinstance(dims, int) else list(dims or [])
    negative = tuple(d - (rank + 1) if d >= 0 else d for d in listed)
    if not listed or any(d <= -(rank + 1) for d in negative):
        raise call.refuse("it mixes the examples of a batch (a reduction over the batch dimension)")
    return negative


# --- shapes and joins -------------------------------------------------------------------------------


@lowers(
    "aten.view", "aten.reshape", "aten._unsafe_view", "aten.flatten", "aten.squeeze", "aten.unsqueeze",
    "aten.view_as", "aten.reshape_as",
)  # fmt: skip
def _reshape(call: Call) -> Lowered:
    var = call.var("self")
    shape = call.shapes(var)
    if math.prod(shape) != math.prod(call.out_shape):
        raise call.refuse("it moves elements between the examples of a batch")
    return Lowered(steps.reshape(shape, call.out_shape), (var,))


@lowers("aten.constant_pad_nd", "aten.pad")
def _pad(call: Call) -> Lowered:
    pad, fill = list(call.constant("pad")), call.args.get("value")
    if call.args.get("mode", "constant") != "constant" or fill not in (None, 0, 0.0):
        raise call.refuse("only padding with zeros is bounded")
    if len(pad) > 2 * len(call.shapes(call.var("self"))):
        raise call.refuse("it pads the batch dimension")
    return Lowered(steps.positive(lambda t: torch.nn.functional.pad(t, pad)), (call.var("self"),))


@lowers("aten.dropout", "aten.feature_dropout", "aten.alpha_dropout")
def _dropout(call: Call) -> Var:
    if call.constant("train"):
        raise call.refuse("dropout in train mode is random: put the model in eval mode")
    return call.var("input")


@lowers("aten.clone", "aten.contiguous", "aten.alias", "aten.detach", "aten.lift_fresh_copy")
def _same(call: Call) -> Var:
    return call.var("self")


@lowers("aten._to_copy", "aten.to")
def _convert(call: Call) -> Var:
    dtype = call.args.get("dtype")
    if dtype is not None and not dtype.is_floating_point:
        raise call.refuse(f"a conversion to {dtype} rounds")
    return call.var("self")


@lowers("aten.cat", "aten.concat")
def _cat(call: Call) -> Lowered:
    tensors = call.args["tensors"]
    if not all(isinstance(t, Var) for t in tensors):
        raise call.refuse("it joins image-dependent values with constants")
    (dim,) = _example_dims(call, call.constant("dim"), len(call.out_shape))
    return Lowered(steps.Cat(dim), tuple(tensors))


# --- arithmetic ------------------------------------------------------------------------------------


@lowers("aten.add", "aten.sub", "aten.rsub", "aten.add_", "aten.sub_")
def _add(call: Call) -> Lowered:
    left, right, alpha = call.args["self"], call.args["other"], call.args.get("alpha", 1)
    if call.op == "aten.rsub":  # other - alpha * self
        return _sum(call, right, left, 1, -alpha)
    return _sum(call, left, right, 1, -alpha if call.op.startswith("aten.sub") else alpha)


def _sum(call: Call, left: Any, right: Any, a: float, b: float) -> Lowered:
    """a * left + b * right, one or both of them image-dependent."""
    if isinstance(left, Var) and isinstance(right, Var):
        if call.shapes(left) != call.out_shape or call.shapes(right) != call.out_shape:
            raise call.refuse("it broadcasts one image-dependent value against another")
        return Lowered(steps.Sum((a, b)), (left, right))
    var, (factor, constant, weight) = (left, (a, right, b)) if isinstance(left, Var) else (right, (b, left, a))
    shift = _example_constant(call, constant) * weight
    return Lowered(steps.elementwise(None if factor == 1 else _example_constant(call, factor), shift), (var,))


@lowers("aten.mul", "aten.mul_", "aten.div", "aten.div_")
def _scale(call: Call) -> Lowered:
    left, right = call.args["self"], call.args["other"]
    dividing = call.op.startswith("aten.div")
    if call.args.get("rounding_mode") is not None:
        raise call.refuse("a division that rounds")
    if isinstance(right, Var) and (dividing or isinstance(left, Var)):
        raise call.refuse("it multiplies or divides by an image-dependent value (not piecewise linear)")
    var, factor = (left, right) if isinstance(left, Var) else (right, left)
    factor = _example_constant(call, factor)
    return Lowered(steps.elementwise(1 / factor if dividing else factor, None), (var,))


@lowers("aten.neg")
def _neg(call: Call) -> Lowered:
    return Lowered(steps.elementwise(torch.tensor(-1.0), None), (call.var("self"),))


def _example_constant(call: Call, value: Any) -> torch.Tensor:
    """A constant operand shaped to broadcast against one batch of outputs: (1, ...) at most out_shape's rank + 1."""
    tensor = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, torch.Tensor) else value
    rank = len(call.out_shape) + 1
    if tensor.dim() == rank and tensor.shape[0] != 1:
        raise call.refuse("its constant operand differs from example to example")
    if tensor.dim() > rank:
        raise call.refuse("its constant operand has more dimensions than the result")
    return tensor.reshape((1,) * (rank - tensor.dim()) + tuple(tensor.shape))


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
    return (value, value)
