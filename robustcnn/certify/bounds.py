"""Bounds on a model's outputs over a whole eps ball, layer by layer: what certification is made of.

Two methods:

- `ibp` (interval bound propagation, Gowal et al. 2018): every activation in a box [lower, upper].
  An affine layer maps a box exactly to the smallest box around its image; ReLU and max pooling are
  monotone. Cheap (about two forward passes) and tight for models trained with it, loose otherwise.
- `crown`: linear bounds in the input, L(x) <= activation <= U(x), carried forward from the input with
  CROWN's relaxations (Zhang et al. 2018; the forward mode of Xu et al. 2020's LiRPA): affine layers are
  exact, an unstable ReLU is bounded above by its chord and below by 0 or the identity, max pooling by
  the input with the largest lower bound. Before every ReLU and pooling the box is the tighter of the
  interval and the linear bounds evaluated over the ball, so `crown` is never looser than `ibp`; layers of up
  to BACKWARD_NEURONS neurons are bounded once more by back-substitution (CROWN's backward mode,
  robustcnn.certify.backward). The output is then bounded by back-substitution with the lower ReLU slopes
  optimised per example (alpha-CROWN, Xu et al. 2021), and the tightest of all is kept.
  Its cost grows with the input size times the layer sizes: it suits small networks on small images.

The last linear layer is merged with the certification question (logit of the true class minus each other
logit) before bounding, as both papers do: a margin whose lower bound is positive over the whole ball
certifies that no input in it changes the prediction.

The model is traced into a graph (robustcnn.certify.graph) whose operators are lowered one registry entry each
(robustcnn.certify.ops): residual connections, concatenations and models from ONNX or torch.export are bounded
like a chain of layers, which is the special case whose node i reads node i - 1. A model with an operator that
cannot be bounded is refused before any work.

Memory: forward linear bounds hold (input size x value size) numbers per image, which a wide convolution on a
large image cannot afford; `memory` (bytes per image) decides which values carry them (`CrownPlan`), and a
relaxed value that gets neither them nor back-substitution keeps its interval box: `CrownPlan.intervals_only`
names those, and the cells say how many.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from robustcnn.certify import ALPHA_STEPS, backward
from robustcnn.certify.graph import Graph, trace
from robustcnn.certify.steps import JOINS, Affine, Box, Linear, Region
from robustcnn.errors import UsageError
from robustcnn.threat import Norm

METHODS = ("ibp", "crown")
BACKWARD_NEURONS = 1024  # crown bounds layers up to this size by back-substitution too (cost ~ size x input size)
MEMORY = 2 << 30  # bytes per image crown's linear bounds may hold by default
FORWARD_COPIES = 4  # tensors of a value's linear-bound size alive while one layer maps them (lower, upper, temporaries)


def bounds(
    model: nn.Module, x: torch.Tensor, eps: float, norm: Norm, method: str, y: torch.Tensor | None = None,
    num_classes: int | None = None, dtype: torch.dtype = torch.float64, differentiable: bool = False,
    alpha_steps: int = ALPHA_STEPS, memory: int = MEMORY, proving: bool = False,
) -> Box:  # fmt: skip
    """Bounds on the logits (y None) or on the margins logit[y] - logit[k], k != y (n, K - 1), over the ball
    of radius eps around each image of x (n, C, H, W) in [0, 1]. `differentiable`: gradients flow to the
    weights (certified training); float64 by default, so that rounding cannot make a bound unsound.
    `alpha_steps`: crown's optimisation of its ReLU slopes for the final lower bound (0: CROWN's own slopes).
    `memory`: bytes per image crown's linear bounds may hold. `proving`: only whether every lower bound is
    positive matters: crown skips the final upper bound and stops optimising once every lower bound is."""
    if method not in METHODS:
        raise UsageError(f"unknown bound method {method!r}; choose one of: {', '.join(METHODS)}")
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        graph = trace(model, tuple(x.shape[1:]))
        if y is not None:
            graph = graph.with_margins(y, num_classes, dtype)
        region = Region.around(x.to(dtype), eps, norm)
        if method == "ibp":
            return intervals(graph, region)[graph.output]
        return _crown(graph, region, alpha_steps, memory, proving)


def intervals(graph: Graph, region: Region, keep: Iterable[int] = ()) -> dict[int, Box]:
    """IBP: the box of the output and of the values in `keep`; every other box is let go once its last reader has
    it. In L2 the first layers are bounded from the ball itself where they can be (`_ball`)."""
    boxes = {0: Box(region.low.view(-1, *graph.shapes[0]), region.high.view(-1, *graph.shapes[0]))}
    ball = _ball(graph, region) if region.norm is Norm.L2 else {}
    last, keep = graph.last_reader(), {*keep, graph.output}
    for i, node in enumerate(graph.nodes):
        boxes[i + 1] = _box(node.step, [boxes[v] for v in node.inputs])
        if i + 1 in ball:
            boxes[i + 1] = boxes[i + 1].intersect(ball[i + 1])
        for value in set(node.inputs):
            if last[value] == i and value not in keep:
                del boxes[value]
    return boxes


def _ball(graph: Graph, region: Region) -> dict[int, Box]:
    """The boxes of the values an affine map of the image with known row norms gives (scalings and reshapes, one
    convolution or linear layer, scalings and reshapes), bounded over the L2 ball: w . x0 + b +- eps ||w||. Tighter
    than intervals from the box around the ball, whose radius is eps ||w||_1. The pixel range still bounds them
    through the intervals they are intersected with."""
    shape = graph.shapes[0]
    centre = region.center.view(-1, *shape)
    squares = torch.ones(1, *shape, dtype=centre.dtype, device=centre.device)
    balls, general = {}, False
    for i, node in enumerate(graph.nodes):
        step = node.step
        if (
            node.inputs != (i,)
            or not isinstance(step, Affine)
            or step.square is None
            or (general and not step.monomial)
        ):
            break
        general = general or not step.monomial
        centre, squares = step.bias(step.apply(centre)), step.square(squares)
        if general:
            radius = region.eps * squares.clamp(min=0).sqrt()
            balls[i + 1] = Box(centre - radius, centre + radius)
    return balls


@dataclass(frozen=True)
class CrownPlan:
    """How crown bounds each value a ReLU or max pooling reads, decided from the shapes and the memory budget."""

    forward: frozenset[int]  # values that carry forward linear bounds (memory allows them and their inputs)
    backward: frozenset[int]  # relaxed values also bounded by back-substitution (at most BACKWARD_NEURONS, and
    # one row of coefficients through the widest value before them fits the memory)
    relaxed: tuple[int, ...]
    affine: tuple[bool, ...]  # per value: an affine function of the image, whose forward bounds are exact

    @classmethod
    def of(cls, graph: Graph, memory: int) -> CrownPlan:
        affine, image_size = graph.affine(), math.prod(graph.shapes[0])
        forward: set[int] = set()
        for value, shape in enumerate(graph.shapes):
            sources = graph.nodes[value - 1].inputs if value else ()
            copies = FORWARD_COPIES // 2 if affine[value] else FORWARD_COPIES  # exact: lower is upper
            fits = backward.BYTES * copies * image_size * math.prod(shape) <= memory
            if fits and all(v in forward for v in sources):
                forward.add(value)
        relaxed, widest = graph.relaxed(), list(itertools.accumulate(map(math.prod, graph.shapes), max))
        deep = {
            v for v in relaxed
            if math.prod(graph.shapes[v]) <= BACKWARD_NEURONS and not (affine[v] and v in forward)
            and backward.BYTES * backward.ALPHA_COPIES * widest[v] <= memory  # one row at a time fits
        }  # fmt: skip
        return cls(frozenset(forward), frozenset(deep), tuple(relaxed), tuple(affine))

    def intervals_only(self) -> list[int]:
        """The relaxed values bounded by intervals alone: neither linear bounds nor back-substitution fit."""
        return [v for v in self.relaxed if v not in self.forward and v not in self.backward]


def crown_plan(model: nn.Module, shape: tuple[int, ...], memory: int = MEMORY) -> tuple[Graph, CrownPlan]:
    graph = trace(model, tuple(shape))
    return graph, CrownPlan.of(graph, memory)


def _crown(graph: Graph, region: Region, alpha_steps: int, memory: int, proving: bool = False) -> Box:
    """Every value a ReLU or max pooling reads bounded as tightly as the plan affords: the interval box,
    intersected with the forward linear bounds and with back-substitution; then the output bounded by
    back-substitution with optimised slopes, intersected with the forward bounds."""
    plan = CrownPlan.of(graph, memory)
    shape = graph.shapes[0]
    boxes = {0: Box(region.low.view(-1, *shape), region.high.view(-1, *shape))}
    linears = {0: Linear.identity(region, shape)} if 0 in plan.forward else {}
    keep, last = {*plan.relaxed, graph.output}, graph.last_reader()
    boxes[0] = _tighten(0, graph, plan, boxes, linears, region, memory)
    for i, node in enumerate(graph.nodes):
        value = i + 1
        inputs = [boxes[v] for v in node.inputs]
        if value in plan.forward:
            linears[value] = _linear(node.step, [linears[v] for v in node.inputs], inputs)
        boxes[value] = _box(node.step, inputs)
        for v in set(node.inputs):
            if last[v] == i:
                linears.pop(v, None)
                if v not in keep:
                    del boxes[v]
        boxes[value] = _tighten(value, graph, plan, boxes, linears, region, memory)
    out = graph.output
    box = boxes[out] if out not in linears else boxes[out].intersect(linears[out].box(region))
    size = box.lower[0].numel()
    rows = torch.eye(size, dtype=box.lower.dtype, device=box.lower.device).reshape(1, size, *graph.shapes[out])
    rows = rows.expand(len(box.lower), *rows.shape[1:])  # per example: the margins' last layer differs per label
    lower = backward.optimised_lower(graph, boxes, rows, region, alpha_steps, memory, proving).view_as(box.lower)
    if proving:  # the upper bound decides nothing: one back-substitution saved
        return Box(torch.maximum(box.lower, lower), box.upper)
    upper = -backward.lower_bound(graph, boxes, -rows, region).view_as(box.upper)
    return box.intersect(Box(lower, upper))


def _tighten(value: int, graph: Graph, plan: CrownPlan, boxes: dict, linears: dict, region: Region, memory: int):
    """A relaxed value's box, intersected with what the plan affords (its exact forward bounds are the box
    already in Linf: an affine map of a box is bounded exactly by intervals)."""
    box = boxes[value]
    if value not in plan.relaxed:
        return box
    if value in linears and not (plan.affine[value] and region.norm is Norm.LINF):
        box = box.intersect(linears[value].box(region))
    if value in plan.backward:
        box = box.intersect(backward.box_of(graph, value, boxes, region, memory))
    return box


def _box(step, inputs: list[Box]) -> Box:
    return step.box(inputs) if isinstance(step, JOINS) else step.box(inputs[0])


def _linear(step, inputs: list[Linear], boxes: list[Box]) -> Linear:
    return step.linear(inputs) if isinstance(step, JOINS) else step.linear(inputs[0], boxes[0])


def certified(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: Norm, method: str, num_classes: int,
    alpha_steps: int = ALPHA_STEPS, memory: int = MEMORY,
) -> torch.Tensor:  # fmt: skip
    """(n,) bool: the prediction is y at every input of the eps ball, proven by the bounds."""
    margins = bounds(
        model, x, eps, norm, method, y=y, num_classes=num_classes, alpha_steps=alpha_steps, memory=memory, proving=True
    )
    return (margins.lower > 0).all(1)
