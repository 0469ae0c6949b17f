"""A model as a graph of bounding steps: traced once by torch.export, each operator lowered by robustcnn.certify.ops.

torch.export gives every model the same form, whatever it was written in (nn.Sequential, a residual network's
forward, torchvision or timm code, onnx2torch's modules, a `.pt2` archive): a graph of ATen operators whose
weights are constants. Constant parts are computed once; every operator on the image becomes one `Node`, and an
operator that cannot be bounded is refused by name before any work. The normalisation robustcnn's wrappers do
(`Normalized`, `Preprocessed`) is one step in front, as it was before models were traced.

A `Graph` lists its nodes in an order where every input comes first; node i writes value i + 1 (value 0 is the
image, the last value is the output). A chain of layers is a graph whose node i reads value i.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from robustcnn.certify import ops, steps
from robustcnn.certify.ops import Call, Lowered, Var
from robustcnn.errors import UsageError, last_line

EXPORT_BATCH = 2  # examples in the traced batch: 1 would let torch.export treat the batch dimension as special
RELAXED = (steps.Relu, steps.MaxPool)  # the steps that relax their input over its box


@dataclass(frozen=True)
class Node:
    name: str  # the traced node's name: what messages and the cells' notes call it
    step: Any  # steps.Affine | Relu | MaxPool | Sum | Cat
    inputs: tuple[int, ...]  # the values it reads


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    shapes: tuple[tuple[int, ...], ...]  # one example's shape of every value: the image's first

    @property
    def output(self) -> int:
        return len(self.nodes)

    def last_reader(self) -> list[int]:
        """Per value, the last node that reads it (the output: one past the last node)."""
        last = [-1] * (len(self.nodes) + 1)
        for i, node in enumerate(self.nodes):
            for value in node.inputs:
                last[value] = i
        last[self.output] = len(self.nodes)
        return last

    def relaxed(self) -> list[int]:
        """The values a ReLU or max pooling reads, in order: where bounds are worth tightening."""
        return sorted({n.inputs[0] for n in self.nodes if isinstance(n.step, RELAXED)})

    def affine(self) -> list[bool]:
        """Per value: an affine function of the image (no relaxed step before it)."""
        exact = [True]
        for node in self.nodes:
            exact.append(not isinstance(node.step, RELAXED) and all(exact[v] for v in node.inputs))
        return exact

    def with_margins(self, y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> Graph:
        """The graph of logit[y] - logit[k], k != y: the last fully connected layer merged with that question when
        the output is one (one affine layer instead of two), else the question appended."""
        last = self.nodes[-1] if self.nodes else None
        dense = last.step.dense if last is not None and isinstance(last.step, steps.Affine) else None
        classes = dense.weight.shape[0] if dense is not None else num_classes
        spec = steps.margin_spec(dense, y, classes, dtype)
        shapes = (*self.shapes[: len(self.nodes) + (0 if dense is not None else 1)], (classes - 1,))
        if dense is not None:
            return Graph((*self.nodes[:-1], Node(last.name, spec, last.inputs)), shapes)
        return Graph((*self.nodes, Node("margins", spec, (self.output,))), shapes)


def trace(model: nn.Module, shape: tuple[int, ...]) -> Graph:
    """The graph of `model` on images of one example's `shape`; one UsageError naming what cannot be bounded."""
    prefix, net, batch = _peel(model)
    module = _exported(model, net, tuple(shape), batch)
    return _lower(module, net, prefix, tuple(shape), batch)


def check_model(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Raises the UsageError `trace` would, before any work."""
    trace(model, shape)


# --- tracing -------------------------------------------------------------------------------------------


def _peel(model: nn.Module) -> tuple[list[steps.Affine], nn.Module, int]:
    """robustcnn's own wrappers, taken off before tracing: their normalisation as a step (the same arithmetic
    as before graphs), the network inside, and the batch size a fixed-batch export runs at."""
    from robustcnn.models.base import Normalized
    from robustcnn.models.external.batching import FixedBatch
    from robustcnn.models.preprocess import Preprocessed

    prefix: list[steps.Affine] = []
    net = model
    if isinstance(model, Normalized):
        prefix, net = [steps.standardize(model.mean, model.std)], model.net
    elif isinstance(model, Preprocessed):
        prefix = [] if model.identity else [steps.standardize(model.mean, model.std)]
        net = model.net if model.output.index is None and model.output.key is None else _Selected(model)
    inner = net.net if isinstance(net, _Selected) else net
    return prefix, net, inner.size if isinstance(inner, FixedBatch) else EXPORT_BATCH


class _Selected(nn.Module):
    """A Preprocessed model's network and its output selection (--output-index / --output-key), traced together."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.net, self.output = model.net, model.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.net(x))


_EXPORTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(shape, batch): traced module}


def _exported(model: nn.Module, net: nn.Module, shape: tuple[int, ...], batch: int) -> fx.GraphModule:
    """`net` (what `_peel` left of `model`) traced once per model and shape: bounds are taken batch after batch."""
    traced = _EXPORTS.setdefault(model, {})
    if (shape, batch) not in traced:
        traced[(shape, batch)] = _export(net, shape, batch)
    return traced[(shape, batch)]


def _export(net: nn.Module, shape: tuple[int, ...], batch: int) -> fx.GraphModule:
    tensor = next(itertools.chain(net.parameters(), net.buffers()), torch.zeros(()))
    dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
    example = torch.rand(batch, *shape, dtype=dtype, device=tensor.device)
    with _eval_mode(net), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(net, (example,), strict=False).module()
        except Exception as error:  # torch.export raises many kinds: UserError, Unsupported, RuntimeError ...
            raise UsageError(
                f"certified bounds trace the model with torch.export, which cannot trace it: {last_line(error)}"
            ) from None


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """Traced in eval mode (bounds are of the network as it classifies), each module's mode restored after."""
    modes = [(module, module.training) for module in net.modules()]
    for module, _ in modes:
        module.training = False
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# --- lowering ----------------------------------------------------------------------------------------


def _lower(module: fx.GraphModule, net: nn.Module, prefix: list[steps.Affine], shape, batch: int) -> Graph:
    nodes = [Node("normalize", step, (i,)) for i, step in enumerate(prefix)]
    shapes = [shape] * (len(prefix) + 1)
    values: dict[fx.Node, Any] = {}
    output = None
    for node in _live(module.graph):
        if node.op == "placeholder":
            values[node] = Var(len(prefix))
        elif node.op == "get_attr":
            values[node] = _attribute(net, module, node.target)
        elif node.op == "call_function":
            values[node] = _call(node, values, nodes, shapes, batch)
        elif node.op == "output":
            output = _output(node, values)
        else:
            raise UsageError(f"certified bounds cannot bound node {node.name!r} ({node.op} {node.target})")
    if output is None or output.index != len(nodes):
        raise UsageError("certified bounds need a model whose output depends on the image through its layers")
    return Graph(tuple(nodes), tuple(shapes))


def _live(graph: fx.Graph) -> list[fx.Node]:
    """The nodes the output depends on, in graph order (guards and assertions are left out)."""
    live: set[fx.Node] = set()
    todo = [node for node in graph.nodes if node.op == "output"]
    while todo:
        node = todo.pop()
        if node not in live:
            live.add(node)
            todo.extend(node.all_input_nodes)
    return [node for node in graph.nodes if node in live]


def _attribute(net: nn.Module, module: fx.GraphModule, target: str) -> Any:
    """A weight or buffer: the traced network's own tensor where it has that name, so that gradients reach it
    (certified training), else the traced module's (constants torch.export lifted)."""
    for owner in (net, module):
        with contextlib.suppress(AttributeError):
            value = functools.reduce(getattr, target.split("."), owner)
            if isinstance(value, torch.Tensor):
                return value
    raise UsageError(f"certified bounds: the traced graph names {target!r}, which the model does not have")


def _call(node: fx.Node, values: dict, nodes: list[Node], shapes: list, batch: int) -> Any:
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
    if node.target is operator.getitem and isinstance(args[0], tuple) and _depends(args[0]):
        picked = args[0][args[1]]
        if picked is None:
            raise UsageError(f"certified bounds cannot bound output {args[1]} of node {node.args[0].name!r}")
        return picked
    if not _depends((args, kwargs)):
        return node.target(*args, **kwargs)  # a constant: computed once
    if not isinstance(node.target, torch._ops.OpOverload):
        raise UsageError(f"certified bounds cannot bound {node.target} (node {node.name!r})")
    op = str(node.target.overloadpacket)
    if op not in ops.LOWERINGS:
        raise UsageError(
            f"certified bounds cannot bound {op} (node {node.name!r}); they bound: {', '.join(ops.supported_ops())}"
        )
    call = Call(node.name, op, _bind(node.target, args, kwargs), lambda var: shapes[var.index], _shape(node, batch))
    return _add(ops.LOWERINGS[op](call), node, nodes, shapes, call.out_shape)


def _add(result: Any, node: fx.Node, nodes: list[Node], shapes: list, out_shape: tuple[int, ...]) -> Any:
    """A lowering's result as values: a new node's Var, a Var passed through, or a tuple of them."""
    if isinstance(result, tuple):
        return tuple(None if part is None else _add(part, node, nodes, shapes, out_shape) for part in result)
    if isinstance(result, Lowered):
        nodes.append(Node(node.name, result.step, tuple(var.index for var in result.inputs)))
        shapes.append(out_shape)
        return Var(len(nodes))
    return result


def _depends(value: Any) -> bool:
    if isinstance(value, Var):
        return True
    if isinstance(value, (tuple, list)):
        return any(_depends(v) for v in value)
    if isinstance(value, dict):
        return any(_depends(v) for v in value.values())
    return False


def _bind(target: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Arguments by their schema names, defaults filled in."""
    bound = {}
    for i, argument in enumerate(target._schema.arguments):
        if i < len(args) and not argument.kwarg_only:
            bound[argument.name] = args[i]
        elif argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        else:
            bound[argument.name] = argument.default_value if argument.has_default_value() else None
    return bound


def _shape(node: fx.Node, batch: int) -> tuple[int, ...]:
    """One example's shape of the node's (first) output, from the shapes torch.export recorded."""
    value = node.meta.get("val")
    value = value[0] if isinstance(value, (tuple, list)) else value
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
        raise UsageError(f"certified bounds: node {node.name!r} does not keep the batch dimension")
    return tuple(int(size) for size in value.shape[1:])


def _output(node: fx.Node, values: dict) -> Var:
    result = fx.node.map_arg(node.args[0], values.__getitem__)
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    variables = [value for value in outputs if isinstance(value, Var)]
    if len(variables) != 1:
        raise UsageError(
            f"certified bounds need one output of logits; the traced model returns {len(outputs)}: pass "
            "--output-index or --output-key"
        )
    return variables[0]
