"""The pieces bounds are made of: the ball around an image (`Region`), boxes and linear bounds on activations, and
the bounding steps a traced graph's nodes become (`robustcnn.certify.ops` builds them from the graph's operators).
Each step maps boxes (interval bound propagation) and linear bounds (CROWN's forward mode) from its inputs to its
output, and carries a bound's coefficients back (`back`, CROWN's backward mode):

- `Affine`: one input, z -> W z + c (convolution, linear, BatchNorm in eval, pooling by averages, reshapes, ...);
- `Relu` and `MaxPool`: one input, relaxed over its input's box;
- `Sum` and `Cat`: several inputs (residual connections, concatenations), exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustcnn.threat import Norm


@dataclass(frozen=True)
class Region:
    """The inputs a certificate covers: the eps ball around each image, intersected with the pixel range."""

    center: torch.Tensor  # (n, d) the images, flattened
    low: torch.Tensor  # (n, d) the smallest box holding the region (Linf: the region itself)
    high: torch.Tensor
    eps: float
    norm: Norm

    @classmethod
    def around(cls, x: torch.Tensor, eps: float, norm: Norm) -> Region:
        center = x.flatten(1)
        low, high = (center - eps).clamp(0.0, 1.0), (center + eps).clamp(0.0, 1.0)
        return cls(center, low, high, eps, norm)

    def extreme(self, a: torch.Tensor, b: torch.Tensor, side: int) -> torch.Tensor:
        """Min (side -1) or max (side 1) of a . x + b over the region; coefficients a (n, d, k), offsets b (n, k)."""
        mid, radius = (self.high + self.low) / 2, (self.high - self.low) / 2
        value = torch.einsum("nd,ndk->nk", mid, a) + side * torch.einsum("nd,ndk->nk", radius, a.abs()) + b
        if self.norm is Norm.L2:  # the ball itself (Cauchy-Schwarz): tighter than its box when eps is large
            ball = torch.einsum("nd,ndk->nk", self.center, a) + side * self.eps * a.norm(dim=1) + b
            value = torch.maximum(value, ball) if side < 0 else torch.minimum(value, ball)
        return value


@dataclass
class Box:
    lower: torch.Tensor  # (n, *shape)
    upper: torch.Tensor

    def intersect(self, other: Box) -> Box:
        return Box(torch.maximum(self.lower, other.lower), torch.minimum(self.upper, other.upper))


@dataclass
class Linear:
    """Bounds linear in the input: a_lower . x + b_lower <= activation <= a_upper . x + b_upper."""

    a_lower: torch.Tensor  # (n, d, *shape)
    b_lower: torch.Tensor  # (n, *shape)
    a_upper: torch.Tensor
    b_upper: torch.Tensor

    @classmethod
    def identity(cls, region: Region, shape: tuple[int, ...]) -> Linear:
        n, d = region.center.shape
        eye = torch.eye(d, dtype=region.center.dtype, device=region.center.device).expand(n, d, d)
        a = eye.reshape(n, d, *shape)
        zero = torch.zeros(n, *shape, dtype=region.center.dtype, device=region.center.device)
        return cls(a, zero, a, zero)

    @property
    def exact(self) -> bool:
        """Lower and upper are one affine function of the input (no relaxation yet): computed once."""
        return self.a_lower is self.a_upper and self.b_lower is self.b_upper

    def box(self, region: Region) -> Box:
        n, d = self.a_lower.shape[:2]
        shape = self.b_lower.shape[1:]
        lower = region.extreme(self.a_lower.reshape(n, d, -1), self.b_lower.reshape(n, -1), side=-1)
        upper = region.extreme(self.a_upper.reshape(n, d, -1), self.b_upper.reshape(n, -1), side=1)
        return Box(lower.reshape(n, *shape), upper.reshape(n, *shape))


# --- steps -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dense:
    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor | None


@dataclass(frozen=True)
class Affine:
    """A layer z -> W z + c, given as W applied to a batch (`apply`), |W| applied (`apply_abs`) and c (`bias`);
    `transpose` applies W^T to rows shaped like outputs (m, *out) -> (m, *in), None: by autograd through `apply`."""

    apply: Callable[[torch.Tensor], torch.Tensor]
    apply_abs: Callable[[torch.Tensor], torch.Tensor]
    bias: Callable[[torch.Tensor], torch.Tensor]  # c added to an output batch
    transpose: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor] | None = None
    dense: Dense | None = None  # a fully connected layer's weight and bias: the margins merge into it
    square: Callable[[torch.Tensor], torch.Tensor] | None = None  # W * W (elementwise) applied: rows' squared norms
    monomial: bool = False  # one non-zero per row and column (scalings, reshapes): squares compose through it

    def back(self, rows: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        """rows (m, R, *out) -> rows W (m, R, *in): a bound's coefficients moved from the output to the input."""
        flat = rows.flatten(0, 1)
        if self.transpose is not None:
            moved = self.transpose(flat, in_shape)
        else:  # W^T r is the gradient of r . W z; zeros suffice, the layer is linear
            z = torch.zeros(len(flat), *in_shape, dtype=rows.dtype, device=rows.device, requires_grad=True)
            with torch.enable_grad():
                (moved,) = torch.autograd.grad(self.apply(z), z, flat, create_graph=rows.requires_grad)
        return moved.reshape(*rows.shape[:2], *in_shape)

    def offset(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """rows . c per example and row: (n, R)."""
        c = self.bias(torch.zeros(n, *rows.shape[2:], dtype=rows.dtype, device=rows.device)).flatten(1)  # (n, d)
        if len(rows) == 1:  # rows shared by every example
            return c @ rows[0].flatten(1).T
        return torch.einsum("nrd,nd->nr", rows.flatten(2), c)

    def box(self, box: Box) -> Box:
        mid, radius = (box.upper + box.lower) / 2, (box.upper - box.lower) / 2
        centre, spread = self.bias(self.apply(mid)), self.apply_abs(radius)
        return Box(centre - spread, centre + spread)

    def linear(self, bounds: Linear, _: Box) -> Linear:
        if bounds.exact:
            a = self.apply(bounds.a_lower.flatten(0, 1))
            a = a.reshape(*bounds.a_lower.shape[:2], *a.shape[1:])
            b = self.bias(self.apply(bounds.b_lower))
            return Linear(a, b, a, b)
        # W+ L + W- U = W (L + U) / 2 - |W| (U - L) / 2: two passes of the layer instead of four
        a_lower, a_upper = self._pair(bounds.a_lower, bounds.a_upper, flatten=2)
        b_lower, b_upper = self._pair(bounds.b_lower, bounds.b_upper, flatten=1)
        return Linear(a_lower, self.bias(b_lower), a_upper, self.bias(b_upper))

    def _pair(self, lower: torch.Tensor, upper: torch.Tensor, flatten: int) -> tuple[torch.Tensor, torch.Tensor]:
        lead = lower.shape[:flatten]
        mid = ((upper + lower) / 2).reshape(-1, *lower.shape[flatten:])
        half = ((upper - lower) / 2).reshape(-1, *lower.shape[flatten:])
        centre, spread = self.apply(mid), self.apply_abs(half)
        return (centre - spread).reshape(*lead, *centre.shape[1:]), (centre + spread).reshape(*lead, *centre.shape[1:])


def _per_channel(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values (C,) shaped to broadcast over t (N, C, ...) in t's dtype."""
    return values.view(1, -1, *([1] * (t.dim() - 2))).to(t.dtype)


def _channel_bias(values: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t + _per_channel(values, t)


def _channel_scale(values: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t * _per_channel(values, t)


def _no_bias(t: torch.Tensor) -> torch.Tensor:
    return t


def _diagonal(apply, apply_abs, bias) -> Affine:
    """A layer that scales each element on its own: W^T = W."""
    return Affine(apply, apply_abs, bias, lambda rows, _: apply(rows), square=lambda t: apply(apply(t)), monomial=True)


def positive(function: Callable[[torch.Tensor], torch.Tensor]) -> Affine:
    """A linear layer with non-negative weights (pooling by averages, sums): W = |W|, no bias."""
    return Affine(function, function, _no_bias)


def conv(weight: torch.Tensor, bias: torch.Tensor | None, **settings) -> Affine:
    """F.conv2d with `settings` (stride, padding, dilation, groups; padding in numbers)."""

    def apply(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w.to(t.dtype), None, **settings)

    def transpose(rows: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        return torch.nn.grad.conv2d_input((len(rows), *in_shape), weight.to(rows.dtype), rows, **settings)

    shift = _channel_bias(bias) if bias is not None else _no_bias
    return Affine(
        lambda t: apply(t, weight), lambda t: apply(t, weight.abs()), shift, transpose,
        square=lambda t: apply(t, weight.square()),
    )  # fmt: skip


def dense(weight: torch.Tensor, bias: torch.Tensor | None) -> Affine:
    """A fully connected layer: t @ W^T + b."""

    def shift(t: torch.Tensor) -> torch.Tensor:
        return t if bias is None else t + bias.to(t.dtype)

    return Affine(
        lambda t: t @ weight.to(t.dtype).T, lambda t: t @ weight.abs().to(t.dtype).T, shift,
        lambda rows, _: rows @ weight.to(rows.dtype), Dense(weight, bias),
        square=lambda t: t @ weight.square().to(t.dtype).T,
    )  # fmt: skip


def batch_norm(
    mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> Affine:
    """BatchNorm with its running statistics (eval mode): a scale and a shift per channel."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale + (bias if bias is not None else 0)
    return _diagonal(_channel_scale(scale), _channel_scale(scale.abs()), _channel_bias(shift))


def standardize(mean: torch.Tensor, std: torch.Tensor) -> Affine:
    """(x - mean) / std per channel: the normalisation robustcnn's models do inside."""
    mean, std = mean.flatten(), std.flatten()
    return _diagonal(
        lambda t: t / _per_channel(std, t), lambda t: t / _per_channel(std.abs(), t), _channel_bias(-mean / std)
    )


def elementwise(scale: torch.Tensor | None, shift: torch.Tensor | None) -> Affine:
    """t * scale + shift, both broadcast against one example's shape (leading dims of size 1)."""

    def times(t: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
        return t if factor is None else t * factor.to(t.dtype)

    def plus(t: torch.Tensor) -> torch.Tensor:
        return t if shift is None else t + shift.to(t.dtype)

    magnitude = None if scale is None else scale.abs()
    return _diagonal(lambda t: times(t, scale), lambda t: times(t, magnitude), plus)


def reshape(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Affine:
    """Each example's elements in a new shape (flatten, view, squeeze ...): the batch dimension is kept."""
    apply = lambda t: t.reshape(len(t), *out_shape)  # noqa: E731
    return Affine(
        apply, apply, _no_bias, lambda rows, _: rows.reshape(len(rows), *in_shape), square=apply, monomial=True
    )


@dataclass(frozen=True)
class Sum:
    """z = sum_k c_k x_k over inputs of z's shape: a residual connection is c = (1, 1). Exact."""

    coefficients: tuple[float, ...]

    def box(self, boxes: list[Box]) -> Box:
        lower = upper = 0.0
        for c, box in zip(self.coefficients, boxes, strict=True):
            low, high = (box.lower, box.upper) if c >= 0 else (box.upper, box.lower)
            lower, upper = lower + _times(low, c), upper + _times(high, c)
        return Box(lower, upper)

    def linear(self, bounds: list[Linear]) -> Linear:
        sums = [0.0, 0.0, 0.0, 0.0]  # a_lower, b_lower, a_upper, b_upper
        for c, bound in zip(self.coefficients, bounds, strict=True):
            low, high = (bound.a_lower, bound.b_lower), (bound.a_upper, bound.b_upper)
            terms = (*low, *high) if c >= 0 else (*high, *low)  # a negative coefficient swaps the sides
            sums = [total + _times(term, c) for total, term in zip(sums, terms, strict=True)]
        if all(bound.exact for bound in bounds):  # one affine function: keep it one object (Linear.exact)
            return Linear(sums[0], sums[1], sums[0], sums[1])
        return Linear(*sums)

    def back(self, rows: torch.Tensor, _: list[tuple[int, ...]]) -> list[torch.Tensor]:
        return [_times(rows, c) for c in self.coefficients]


def _times(t: torch.Tensor, c: float) -> torch.Tensor:
    return t if c == 1 else t * c


@dataclass(frozen=True)
class Cat:
    """z = the inputs joined along one dimension of each example (`dim` counted from the last). Exact."""

    dim: int  # negative: the same dimension of (n, *shape) and of (n, d, *shape)

    def box(self, boxes: list[Box]) -> Box:
        return Box(torch.cat([b.lower for b in boxes], self.dim), torch.cat([b.upper for b in boxes], self.dim))

    def linear(self, bounds: list[Linear]) -> Linear:
        a_lower, b_lower = (torch.cat([getattr(b, name) for b in bounds], self.dim) for name in ("a_lower", "b_lower"))
        if all(b.exact for b in bounds):  # one affine function: keep it one object (Linear.exact)
            return Linear(a_lower, b_lower, a_lower, b_lower)
        a_upper, b_upper = (torch.cat([getattr(b, name) for b in bounds], self.dim) for name in ("a_upper", "b_upper"))
        return Linear(a_lower, b_lower, a_upper, b_upper)

    def back(self, rows: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        return list(rows.split([shape[self.dim] for shape in shapes], self.dim))


JOINS = (Sum, Cat)  # the steps with several inputs: box, linear and back take one entry per input


def crown_slope(box: Box) -> torch.Tensor:
    """CROWN's lower slope for a ReLU over its input box: 1 when upper > -lower, else 0 (the smaller area)."""
    return (box.upper > -box.lower).to(box.lower.dtype)


def relu_relaxation(box: Box, slope: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Linear bounds on relu(z) over the box of z: (lower slope, upper slope, upper intercept). Stable neurons are
    exact; an unstable one (lower < 0 < upper) gets the chord above and `slope` in [0, 1] below (CROWN's choice
    by default). Any such slope is sound, which is what optimising the slopes relies on."""
    lower, upper = box.lower, box.upper
    active, unstable = lower >= 0, (lower < 0) & (upper > 0)
    chord = upper / (upper - lower).clamp(min=1e-12)
    slope = crown_slope(box) if slope is None else slope
    slope_low = torch.where(active, 1.0, torch.where(unstable, slope, 0.0)).to(lower.dtype)
    slope_up = torch.where(active, 1.0, torch.where(unstable, chord, 0.0)).to(lower.dtype)
    return slope_low, slope_up, torch.where(unstable, -chord * lower, 0.0).to(lower.dtype)


@dataclass(frozen=True)
class Relu:
    def box(self, box: Box) -> Box:
        return Box(box.lower.clamp(min=0), box.upper.clamp(min=0))

    def back(self, rows: torch.Tensor, box: Box, slope: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """A lower bound on rows . relu(z) as rows' . z + offset over the box of z (CROWN's backward step): a positive
        coefficient takes the lower relaxation (`slope` per example and row, (n, R, *shape)), a negative one the
        chord above. Returns (rows', offset (n, R))."""
        per_row = Box(box.lower.unsqueeze(1), box.upper.unsqueeze(1))  # (n, 1, *shape): broadcast over the rows
        slope_low, slope_up, intercept = relu_relaxation(per_row, slope)
        rows = rows.expand(len(box.lower), *rows.shape[1:])
        offset = torch.einsum("nrd,nd->nr", rows.clamp(max=0).flatten(2), intercept[:, 0].flatten(1))
        return torch.where(rows >= 0, slope_low, slope_up) * rows, offset

    def linear(self, bounds: Linear, box: Box) -> Linear:
        """CROWN's relaxation of each ReLU (`relu_relaxation`) applied to the linear bounds of its input."""
        slope_low, slope_up, offset_up = relu_relaxation(box)
        return Linear(
            bounds.a_lower * slope_low.unsqueeze(1),
            bounds.b_lower * slope_low,
            bounds.a_upper * slope_up.unsqueeze(1),
            bounds.b_upper * slope_up + offset_up,
        )


@dataclass(frozen=True)
class MaxPool:
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def _pool(self, t: torch.Tensor, indices: bool = False):
        return F.max_pool2d(
            t, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, return_indices=indices
        )

    def box(self, box: Box) -> Box:
        return Box(self._pool(box.lower), self._pool(box.upper))

    def linear(self, bounds: Linear, box: Box) -> Linear:
        """Below: the input with the largest lower bound (the max is at least any input). Above: that input's
        upper bound where its lower bound beats every other input's upper bound (it is the max), else the
        largest upper bound, a constant. Overlapping windows always take the constant (sound, simpler)."""
        low_pooled, chosen = self._pool(box.lower, indices=True)
        high_pooled = self._pool(box.upper)
        n, c = chosen.shape[:2]
        flat_chosen = chosen.flatten(2)  # (n, c, k): indices into each input channel's H * W
        decided = self._decided(box, low_pooled, chosen)

        def pick(t: torch.Tensor) -> torch.Tensor:  # (n, [d,] c, H, W) -> the chosen inputs (n, [d,] c, h, w)
            lead = t.shape[: t.dim() - 3]
            index = flat_chosen.view(n, *([1] * (len(lead) - 1)), c, -1).expand(*lead, c, flat_chosen.shape[-1])
            return t.flatten(-2).gather(-1, index).reshape(*lead, *low_pooled.shape[1:])

        keep = decided.unsqueeze(1)
        return Linear(
            pick(bounds.a_lower),
            pick(bounds.b_lower),
            torch.where(keep, pick(bounds.a_upper), 0.0),
            torch.where(decided, pick(bounds.b_upper), high_pooled),
        )

    def back(self, rows: torch.Tensor, box: Box) -> tuple[torch.Tensor, torch.Tensor]:
        """A lower bound on rows . maxpool(z) over the box of z, the same relaxation as `linear`: a positive
        coefficient goes to the chosen input, a negative one to it where it is decided, else to the constant."""
        low_pooled, chosen = self._pool(box.lower, indices=True)
        decided = self._decided(box, low_pooled, chosen).unsqueeze(1)
        rows = rows.expand(len(box.lower), *rows.shape[1:])
        offset = torch.where(decided, 0.0, rows.clamp(max=0) * self._pool(box.upper).unsqueeze(1)).flatten(2).sum(2)
        coefficient = torch.where(decided | (rows >= 0), rows, 0.0)
        n, r, c = coefficient.shape[:3]
        index = chosen.flatten(2).unsqueeze(1).expand(n, r, c, -1)
        moved = torch.zeros(n, r, c, box.lower[0, 0].numel(), dtype=rows.dtype, device=rows.device)
        moved = moved.scatter_add(3, index, coefficient.flatten(3))
        return moved.reshape(n, r, *box.lower.shape[1:]), offset

    def _decided(self, box: Box, low_pooled: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Where the chosen input's lower bound beats every other input's upper bound: it is the max. Only for
        windows that do not overlap (else every window is undecided: sound, simpler)."""
        if any(s < k for s, k in zip(self.stride, self.kernel_size, strict=True)) or tuple(self.dilation) != (1, 1):
            return torch.zeros_like(low_pooled, dtype=torch.bool)
        others = box.upper.flatten(2).scatter(2, chosen.flatten(2), -math.inf).reshape(box.upper.shape)
        return low_pooled >= self._pool(others)


# --- the certification question ---------------------------------------------------------------


def margin_spec(last: Dense | None, y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> Affine:
    """z -> (logit[y] - logit[k]) for every k != y, per example, merged into the last linear layer when there is one."""
    n = len(y)
    others = torch.stack([torch.cat([torch.arange(c), torch.arange(c + 1, num_classes)]) for c in range(num_classes)])
    others = others.to(y.device)[y]  # (n, K - 1)
    spec = F.one_hot(y, num_classes).to(dtype)[:, None, :] - F.one_hot(others, num_classes).to(dtype)  # (n, K-1, K)
    weight = spec if last is None else spec @ last.weight.to(dtype)  # (n, K - 1, features)
    if last is not None and last.bias is not None:
        offset = spec @ last.bias.to(dtype)
    else:
        offset = torch.zeros(n, num_classes - 1, dtype=dtype, device=y.device)
    return _per_example(weight, offset)


def _per_example(weight: torch.Tensor, offset: torch.Tensor) -> Affine:
    """A linear layer whose weight differs per example: t is (n * m, features) or (n, features)."""
    n = len(weight)

    def apply(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        grouped = t.reshape(n, -1, t.shape[-1])  # (n, m, features)
        return torch.einsum("nmf,nkf->nmk", grouped, w.to(t.dtype)).reshape(len(t), -1)

    def bias(t: torch.Tensor) -> torch.Tensor:
        return (t.reshape(n, -1, t.shape[-1]) + offset.to(t.dtype)[:, None]).reshape(t.shape)

    def transpose(rows: torch.Tensor, _: tuple[int, ...]) -> torch.Tensor:
        return (rows.reshape(n, -1, rows.shape[-1]) @ weight.to(rows.dtype)).flatten(0, 1)

    return Affine(lambda t: apply(t, weight), lambda t: apply(t, weight.abs()), bias, transpose)
