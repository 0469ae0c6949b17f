"""The pieces bounds are made of: the ball around an image (`Region`), boxes and linear bounds on activations, and
one bounding step per layer type (`LAYERS`), each able to map a box (interval bound propagation) and linear bounds
(CROWN's forward mode). `robustcnn.certify.bounds` chains them into a whole model's bounds;
`robustcnn.certify.backward` carries bounds back through the same steps.

A model with any layer not in `LAYERS` is refused (`check_model`) before any work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustcnn.errors import UsageError
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


# --- layers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Affine:
    """A layer z -> W z + c, given as W applied to a batch (`apply`), |W| applied (`apply_abs`) and c (`bias`);
    `transpose` applies W^T to rows shaped like outputs (m, *out) -> (m, *in), None: by autograd through `apply`."""

    apply: Callable[[torch.Tensor], torch.Tensor]
    apply_abs: Callable[[torch.Tensor], torch.Tensor]
    bias: Callable[[torch.Tensor], torch.Tensor]  # c added to an output batch
    transpose: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor] | None = None

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


def _conv(module: nn.Conv2d) -> Affine:
    if module.padding_mode != "zeros":
        raise UsageError(f"Conv2d with padding_mode={module.padding_mode!r}: certified bounds support 'zeros' only")
    settings = {key: getattr(module, key) for key in ("stride", "padding", "dilation", "groups")}
    weight = module.weight

    def conv(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w.to(t.dtype), None, **settings)

    def transpose(rows: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        return torch.nn.grad.conv2d_input((len(rows), *in_shape), weight.to(rows.dtype), rows, **settings)

    bias = _channel_bias(module.bias) if module.bias is not None else _no_bias
    return Affine(lambda t: conv(t, weight), lambda t: conv(t, weight.abs()), bias, transpose)


def _linear(module: nn.Linear) -> Affine:
    weight = module.weight

    def bias(t: torch.Tensor) -> torch.Tensor:
        return t if module.bias is None else t + module.bias.to(t.dtype)

    return Affine(
        lambda t: t @ weight.to(t.dtype).T, lambda t: t @ weight.abs().to(t.dtype).T, bias,
        lambda rows, _: rows @ weight.to(rows.dtype),
    )  # fmt: skip


def _batch_norm(module: nn.modules.batchnorm._BatchNorm) -> Affine:
    if module.training or module.running_mean is None:
        raise UsageError(f"{type(module).__name__} must be in eval mode with running statistics to be bounded")
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale + (module.bias if module.bias is not None else 0)
    return _diagonal(_channel_scale(scale), _channel_scale(scale.abs()), _channel_bias(shift))


def _diagonal(apply, apply_abs, bias) -> Affine:
    """A layer that scales each element on its own: W^T = W."""
    return Affine(apply, apply_abs, bias, lambda rows, _: apply(rows))


def _positive(function: Callable[[torch.Tensor], torch.Tensor]) -> Affine:
    """A linear layer with non-negative weights (pooling by averages, reshapes): W = |W|, no bias."""
    return Affine(function, function, _no_bias)


def _avg_pool(module: nn.AvgPool2d) -> Affine:
    settings = {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding}
    extra = {"ceil_mode": module.ceil_mode, "count_include_pad": module.count_include_pad}
    return _positive(lambda t: F.avg_pool2d(t, **settings, **extra, divisor_override=module.divisor_override))


def _adaptive_avg_pool(module: nn.AdaptiveAvgPool2d) -> Affine:
    return _positive(lambda t: F.adaptive_avg_pool2d(t, module.output_size))


def _flatten(module: nn.Flatten) -> Affine:
    if module.start_dim != 1:
        raise UsageError(f"Flatten(start_dim={module.start_dim}): certified bounds support start_dim=1 only")
    flatten = lambda t: t.flatten(1, module.end_dim)  # noqa: E731
    return Affine(flatten, flatten, _no_bias, lambda rows, in_shape: rows.reshape(len(rows), *in_shape))


def _identity(_: nn.Module) -> Affine:
    same = lambda t: t  # noqa: E731
    return Affine(same, same, _no_bias, lambda rows, _: rows)


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
    module: nn.MaxPool2d

    def _pool(self, t: torch.Tensor, indices: bool = False):
        m = self.module
        return F.max_pool2d(t, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=indices)

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
        kernel, stride = _pair(self.module.kernel_size), _pair(self.module.stride or self.module.kernel_size)
        if any(s < k for s, k in zip(stride, kernel, strict=True)) or _pair(self.module.dilation) != (1, 1):
            return torch.zeros_like(low_pooled, dtype=torch.bool)
        others = box.upper.flatten(2).scatter(2, chosen.flatten(2), -math.inf).reshape(box.upper.shape)
        return low_pooled >= self._pool(others)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


LAYERS: dict[type[nn.Module], Callable[[nn.Module], Affine | Relu | MaxPool]] = {  # module type -> its step
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm2d: _batch_norm,
    nn.BatchNorm1d: _batch_norm,
    nn.AvgPool2d: _avg_pool,
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool,
    nn.Flatten: _flatten,
    nn.Dropout: _identity,  # eval mode: the identity
    nn.Identity: _identity,
    nn.ReLU: lambda _: Relu(),
    nn.MaxPool2d: MaxPool,
}
CONTAINERS = (nn.Sequential,)


def supported_layers() -> list[str]:
    return sorted(t.__name__ for t in (*LAYERS, *CONTAINERS) if not t.__name__.startswith("_")) + [
        "robustcnn Normalized"
    ]


def layers(model: nn.Module) -> list[nn.Module]:
    """The model as a chain of supported layers (containers unrolled), or one UsageError naming what is not."""
    from robustcnn.models.base import Normalized

    if isinstance(model, Normalized):
        return [_Standardize(model.mean, model.std), *layers(model.net)]
    if isinstance(model, CONTAINERS):
        return [layer for child in model.children() for layer in layers(child)]
    if type(model) not in LAYERS:
        raise UsageError(
            f"certified bounds do not support layer {type(model).__name__}; supported: {', '.join(supported_layers())}"
        )
    return [model]


class _Standardize(nn.Module):
    """(x - mean) / std per channel: the normalisation robustcnn models do inside."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.mean, self.std = mean.flatten(), std.flatten()


LAYERS[_Standardize] = lambda m: _diagonal(
    lambda t: t / _per_channel(m.std, t),
    lambda t: t / _per_channel(m.std.abs(), t),
    _channel_bias(-m.mean / m.std),
)


def check_model(model: nn.Module) -> None:
    """Raises the UsageError `layers` would, before any work."""
    for layer in layers(model):
        LAYERS[type(layer)](layer)


# --- the certification question ---------------------------------------------------------------


def margin_spec(last: nn.Linear | None, y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> Affine:
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
