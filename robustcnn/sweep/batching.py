"""How many images a model takes per batch, and what happens when a batch does not fit in GPU memory.

The start size is given (--batch-size N) or measured once per model (`choose_batch_size`, --batch-size auto: the
largest forward+backward that fits, halved). `Batches` then runs a cell's work batch by batch; a batch that raises
torch.OutOfMemoryError is redone at half its size (down to 1), and every later batch of the model uses the smaller
size. Halving never changes a number: each example is computed alone (random starts drawn per example,
robustcnn/attacks/art.py `per_example_starts`), so a batch redone smaller gives the flags it would have given.
Square is the exception: ART draws its squares for the whole batch (attacks/square.py).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustcnn.console import progress, say
from robustcnn.errors import RunFailed

OutOfMemory = torch.OutOfMemoryError  # torch.cuda.OutOfMemoryError is the same class
AUTO = "auto"
CPU_BATCH = 128  # a batch of 32-128 keeps a CPU's working set in cache (one of 1000 is slower)
SEARCH_FIRST = 32  # --batch-size auto tries 32, 64, 128, ... images
SEARCH_CAP = 4096  # ... up to this many (or n): beyond it a GPU is busy anyway
SAFETY = 2  # auto takes the largest fit divided by this: attacks keep a few input-sized buffers (x, x_adv, the best
# iterate, ART's numpy copies) beside the activations the probe measured, and memory fragments over a sweep


def parse_batch_size(value: object) -> int | str:
    """--batch-size: a positive whole number, or auto."""
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError("choose a positive integer or auto")
    return int(text)


@dataclass
class Batches:
    """One model's batch size while a sweep runs: halved when a batch runs out of GPU memory (`backoffs`)."""

    size: int  # images per batch now
    model: str = ""  # the model's id, for the message
    backoffs: list[dict[str, Any]] = field(default_factory=list)  # {"from", "to", "where"} per halving

    def run(self, count: int, work: Callable[[int, int], None], where: str) -> None:
        """work(start, stop) for consecutive [start, stop) covering range(count), `size` at a time; a batch out of
        memory is redone at half its size. `where` (the cell or attack) names it in the record and the message."""
        bar = progress(total=count, desc=where, unit="image")
        start = 0
        try:
            while start < count:
                stop = min(count, start + self.size)
                try:
                    work(start, stop)
                    failed = 0
                except OutOfMemory as error:
                    failed = stop - start
                    if failed == 1:
                        raise RunFailed(
                            f"{self.model}: out of GPU memory with a batch of 1 image in {where}; free the GPU "
                            "(other processes?) or use a device with more memory"
                        ) from error
                if failed:
                    release_memory()  # outside the except block: the traceback no longer holds the batch
                    self._halve(failed, where)
                    continue
                bar.update(stop - start)
                start = stop
        finally:
            bar.close()

    def _halve(self, failed: int, where: str) -> None:
        to = max(1, failed // 2)
        if not self.backoffs:
            say(
                f"{self.model}: out of GPU memory with a batch of {failed} in {where}; going on with {to} "
                "(halved again if needed; manifest.json records it)"
            )
        self.backoffs.append({"from": failed, "to": to, "where": where})
        self.size = to


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def choose_batch_size(
    requested: int | str | None, model: nn.Module, shape: tuple[int, ...], device: torch.device, n: int
) -> tuple[int, dict[str, Any]]:
    """(images per batch, how it was chosen, for the manifest). "auto" (or None) on CUDA measures the model
    (`measure_batch_size`); elsewhere it is the CPU default, CPU_BATCH (also MPS, whose memory is shared)."""
    if requested not in (None, AUTO):
        return int(requested), {"requested": int(requested)}
    if device.type != "cuda":
        return CPU_BATCH, {"requested": AUTO, "rule": f"{device.type}: {CPU_BATCH}, a size that stays in cache"}
    largest, capped = largest_fit(model, shape, device, n)
    size = _auto_size(largest, capped)
    rule = (
        f"forward+backward of {largest} fit, the most tried (min(n, {SEARCH_CAP}))"
        if capped
        else f"largest forward+backward that fit: {largest}, divided by {SAFETY} for the attacks' own buffers"
    )
    return size, {"requested": AUTO, "largest_fit": largest, "rule": rule}


def measure_batch_size(model: nn.Module, shape: tuple[int, ...], device: torch.device, n: int) -> int:
    """What "auto" chooses on a GPU, on any device (tests inject the out-of-memory error on a CPU)."""
    return _auto_size(*largest_fit(model, shape, device, n))


def _auto_size(largest: int, capped: bool) -> int:
    """The cap when it fit (nothing larger was tried), else the largest fit divided by SAFETY."""
    return largest if capped else max(1, largest // SAFETY)


def largest_fit(model: nn.Module, shape: tuple[int, ...], device: torch.device, n: int) -> tuple[int, bool]:
    """(the largest batch of 32, 64, ... up to min(n, SEARCH_CAP) whose forward+backward fit, whether the cap was
    reached without running out of memory). When 32 does not fit: 16, 8, ... down to 1, else RunFailed."""
    limit = max(1, min(n, SEARCH_CAP))
    size = min(SEARCH_FIRST, limit)
    if not _fits(model, shape, device, size):
        while size > 1:
            size //= 2
            if _fits(model, shape, device, size):
                return size, False
        raise RunFailed(f"out of GPU memory computing the input gradient of one image on {device}: the model does "
                        "not fit; free the GPU or use a device with more memory")  # fmt: skip
    while size < limit:
        bigger = min(2 * size, limit)
        if not _fits(model, shape, device, bigger):
            return size, False
        size = bigger
    return size, True


def _fits(model: nn.Module, shape: tuple[int, ...], device: torch.device, size: int) -> bool:
    try:
        _input_gradient(model, shape, device, size)
        fits = True
    except OutOfMemory:
        fits = False
    release_memory()
    return fits


def _input_gradient(model: nn.Module, shape: tuple[int, ...], device: torch.device, size: int) -> None:
    """One attack step's memory: a forward pass keeping activations, and the gradient with respect to the input."""
    x = torch.full((size, *shape), 0.5, device=device, requires_grad=True)  # (size, C, H, W) mid-grey
    (grad,) = torch.autograd.grad(model(x).float().logsumexp(1).sum(), x)
    del grad, x
