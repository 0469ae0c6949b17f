"""Networks exported with a fixed batch size, run in chunks of that size so attacks can use any batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class FixedBatch(nn.Module):
    """Splits x into chunks of `size` (the last one zero-padded) and joins the outputs; gradients flow through."""

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor) -> Any:
        if len(x) == self.size:
            return self.net(x)
        outputs = []
        for start in range(0, len(x), self.size):
            chunk = x[start : start + self.size]
            missing = self.size - len(chunk)
            if missing:
                chunk = torch.cat([chunk, chunk.new_zeros((missing, *chunk.shape[1:]))])
            outputs.append(_first(self.net(chunk), self.size - missing))
        return _join(outputs)


def _first(out: Any, count: int) -> Any:
    """The first `count` examples of an output: a tensor, or a tuple / list / dict of them."""
    if isinstance(out, torch.Tensor):
        return out[:count]
    if isinstance(out, Mapping):
        return {k: _first(v, count) for k, v in out.items()}
    return type(out)(_first(v, count) for v in out)


def _join(outputs: list[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, Mapping):
        return {k: _join([o[k] for o in outputs]) for k in first}
    return type(first)(_join(list(parts)) for parts in zip(*outputs, strict=True))


def fixed_batch_note(spec: str, size: int) -> str:
    return (
        f"{spec} was exported with a fixed batch size of {size}: it runs {size} image(s) at a time "
        "(export it with a dynamic batch dimension to let attacks use large batches)"
    )
