"""CROWN's backward mode (Zhang et al. 2018): a bound on rows . f(x) carried from the output back to the input.

Each layer moves the coefficients one layer down: an affine layer exactly (W^T), a ReLU or max pooling through
a linear relaxation over the box the forward pass found for its input. At the input the bound is minimised
over the eps ball in closed form. Going back through the whole network at once is what makes it tighter than
boxes, which lose the correlation between neurons at every layer. Over a graph the coefficients flow back along
every edge: a value several nodes read (the input of a residual block) gets the sum of what each sends it.

The lower slopes of unstable ReLUs may be any value in [0, 1] and the bound stays sound; `optimised_lower`
picks them per example and margin by gradient ascent on the bound (alpha-CROWN, Xu et al. 2021), which is
what lifts certified accuracy on models trained with interval bounds, where CROWN's fixed choice is often
looser than the intervals themselves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustcnn.certify.graph import Graph
from robustcnn.certify.steps import JOINS, Affine, Box, Region, Relu, crown_slope

ELEMENTS_PER_CHUNK = 1 << 23  # rows x layer size x images held at once: ~64 MB of float64 per tensor
BYTES = 8  # float64
ALPHA_COPIES = 4  # tensors of rows' size autograd keeps per value while the slopes are optimised (measured: README)
ALPHA_LR = 0.1  # Adam's step on the slopes, which live in [0, 1]
ALPHA_PATIENCE = 5  # proving: steps over which an unproven margin must gain ALPHA_STALL of its distance to 0
ALPHA_STALL = 0.01  # (a margin of -2e14 gaining 0.04% a step is not going to be proven: stop optimising it)


def lower_bound(graph: Graph, boxes: dict[int, Box], rows: torch.Tensor, region: Region,
                slopes: dict[int, torch.Tensor] | None = None, start: int | None = None) -> torch.Tensor:  # fmt: skip
    """(n, R): a lower bound of rows . v(x) over the region, v the value `start` of the graph (its output by default);
    rows (1 or n, R, *shape). boxes[v]: the box of every value a ReLU or max pooling reads; slopes: per ReLU node
    index, (n, R, *shape). Rows reaching a value from several readers (a residual connection) are summed."""
    start = graph.output if start is None else start
    n = len(region.center)
    total = torch.zeros(n, rows.shape[1], dtype=rows.dtype, device=rows.device)
    pending = {start: rows}
    for i in reversed(range(start)):
        rows = pending.pop(i + 1, None)
        if rows is None:  # the value does not reach `start`
            continue
        node = graph.nodes[i]
        step = node.step
        if isinstance(step, Affine):
            total = total + step.offset(rows, n)
            moved = [step.back(rows, graph.shapes[node.inputs[0]])]
        elif isinstance(step, JOINS):
            moved = step.back(rows, [graph.shapes[v] for v in node.inputs])
        else:
            box = boxes[node.inputs[0]]
            if isinstance(step, Relu):
                rows, offset = step.back(rows, box, None if slopes is None else slopes.get(i))
            else:
                rows, offset = step.back(rows, box)
            total = total + offset
            moved = [rows]
        for value, part in zip(node.inputs, moved, strict=True):
            pending[value] = part if value not in pending else pending[value] + part
    if 0 not in pending:  # v does not depend on the image
        return total
    rows = pending[0]
    coefficients = rows.expand(n, *rows.shape[1:]).flatten(2).transpose(1, 2)  # (n, d, R)
    return region.extreme(coefficients, total, side=-1)


def box_of(graph: Graph, value: int, boxes: dict[int, Box], region: Region, memory: int) -> Box:
    """The box of a value, every neuron bounded by back-substitution from the input (rows in chunks that fit
    `memory` bytes per image, and ELEMENTS_PER_CHUNK)."""
    shape, n = graph.shapes[value], len(region.center)
    size = math.prod(shape)
    widest = max(math.prod(s) for s in graph.shapes[: value + 1])
    chunk = max(1, min(ELEMENTS_PER_CHUNK // (n * widest), memory // (BYTES * ALPHA_COPIES * widest)))
    lows, highs = [], []
    for start in range(0, size, chunk):
        picks = torch.arange(start, min(start + chunk, size), device=region.center.device)
        rows = F.one_hot(picks, size).to(region.center.dtype).reshape(1, len(picks), *shape)
        lows.append(lower_bound(graph, boxes, rows, region, start=value))
        highs.append(-lower_bound(graph, boxes, -rows, region, start=value))
    return Box(torch.cat(lows, 1).reshape(n, *shape), torch.cat(highs, 1).reshape(n, *shape))


def optimised_lower(graph: Graph, boxes: dict[int, Box], rows: torch.Tensor, region: Region, iterations: int,
                    memory: int, proving: bool = False) -> torch.Tensor:  # fmt: skip
    """The best lower bound of rows . f(x) over CROWN's slopes and `iterations` Adam steps on them. Each row has
    its own slopes, so rows are optimised in groups that fit `memory` bytes per image: the same bound.
    `proving`: stop once every bound is positive (what certification asks; more steps change no verdict), or
    once no unproven bound gained ALPHA_STALL of its distance to 0 over the last ALPHA_PATIENCE steps (at that pace
    the remaining steps would not prove it)."""
    per_row = BYTES * ALPHA_COPIES * sum(math.prod(shape) for shape in graph.shapes)
    group = max(1, memory // per_row) if iterations > 0 else rows.shape[1]
    if group >= rows.shape[1]:
        return _optimised(graph, boxes, rows, region, iterations, proving)
    parts = [_optimised(graph, boxes, part, region, iterations, proving) for part in rows.split(group, dim=1)]
    return torch.cat(parts, dim=1)


def _optimised(graph: Graph, boxes: dict[int, Box], rows: torch.Tensor, region: Region, iterations: int,
               proving: bool) -> torch.Tensor:  # fmt: skip
    best = lower_bound(graph, boxes, rows, region)
    if iterations <= 0 or (proving and _proven(best)):
        return best
    n, count = len(region.center), rows.shape[1]
    slopes = {
        i: crown_slope(boxes[node.inputs[0]]).unsqueeze(1).expand(n, count, *graph.shapes[node.inputs[0]]).clone()
        for i, node in enumerate(graph.nodes)
        if isinstance(node.step, Relu)
    }
    for slope in slopes.values():
        slope.requires_grad_(True)
    optimizer = torch.optim.Adam(slopes.values(), lr=ALPHA_LR)
    history = [best]
    with torch.enable_grad():
        for _ in range(iterations):
            bound = lower_bound(graph, boxes, rows, region, slopes)
            best = torch.maximum(best, bound.detach())
            history.append(best)
            if proving and (_proven(best) or _stalled(history)):
                return best
            optimizer.zero_grad()
            (-bound.sum()).backward()
            optimizer.step()
            with torch.no_grad():
                for slope in slopes.values():
                    slope.clamp_(0.0, 1.0)  # every slope in [0, 1] keeps the bound sound
    with torch.no_grad():
        return torch.maximum(best, lower_bound(graph, boxes, rows, region, slopes))


def _proven(best: torch.Tensor) -> bool:
    return bool((best > 0).all())


def _stalled(history: list[torch.Tensor]) -> bool:
    """No bound still at or below 0 gained ALPHA_STALL of its distance to 0 over the last ALPHA_PATIENCE steps."""
    if len(history) <= ALPHA_PATIENCE:
        return False
    best, before = history[-1], history[-1 - ALPHA_PATIENCE]
    unproven = best <= 0
    return bool(((best - before)[unproven] <= ALPHA_STALL * -best[unproven]).all())
