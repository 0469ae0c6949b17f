"""Training under torchrun: one process per device, gradients averaged by DistributedDataParallel (DDP).

`session()` reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK). Without it, the `Group` it yields has
one rank and every collective is the identity, so a single process computes exactly what it always did. The
loop talks to the group, never to `torch.distributed`: rank 0 speaks and writes for all, every rank trains on
its share of each global batch, and every decision (stop on a non-finite loss, stop on a signal, best epoch)
is taken from numbers that are the same on every rank.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from robustcnn import console
from robustcnn.errors import UsageError

# How long a rank waits for the others in one collective. The longest planned wait is rank 0's final test
# pass; a rank that died is noticed sooner (gloo: its socket closes; torchrun tears the group down on one node).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
RANK_SEED_STRIDE = 1_000_000_007  # seed offset per rank: attack starts and noise differ across ranks' images
_TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass
class _Stop:
    """Signals received during a session (see `_on_signal`)."""

    requested: bool = False  # a first Ctrl-C / SIGTERM: all ranks stop at the next check
    final: bool = False  # stopping now: further signals are ignored so that rank 0's last writes finish


_stop = _Stop()


def launched() -> bool:
    """True in a process that torchrun (or another launcher with its environment) started."""
    return all(name in os.environ for name in _TORCHRUN_ENV)


def is_main_process() -> bool:
    """Rank 0, or a process outside torchrun: the one that prints summaries and writes files."""
    return os.environ.get("RANK", "0") == "0" if launched() else True


def launch_command() -> str:
    """How to start training again the way this process was started (for resume hints)."""
    if not launched():
        return "python -m robustcnn.train"
    return f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '1')} -m robustcnn.train"


@dataclass(frozen=True)
class Group:
    """This process's place in the training job; `world_size` 1 and `backend` None without torchrun."""

    device: torch.device  # this rank's device: cuda:LOCAL_RANK under torchrun on GPUs
    rank: int = 0
    world_size: int = 1
    backend: str | None = None  # "nccl" (CUDA) or "gloo" (CPU) under torchrun

    @property
    def active(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self, batch_size: int) -> dict[str, Any]:
        """What run.json records about the job."""
        return {"world_size": self.world_size, "backend": self.backend, "batch_per_rank": batch_size // self.world_size}

    def check_batch(self, batch_size: int) -> None:
        """--batch-size is the global batch: it must split into equal shares, or one recipe would mean two things."""
        if batch_size % self.world_size:
            nearest = batch_size - batch_size % self.world_size or self.world_size
            raise UsageError(
                f"--batch-size {batch_size} is the global batch, split over {self.world_size} processes: "
                f"pick a multiple of {self.world_size} (e.g. {nearest})"
            )

    def share(self, n: int) -> slice:
        """This rank's contiguous part of n items; parts differ in size by at most one."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def batches(self, n: int, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, int, slice]]:
        """(this rank's image indices, global batch size, its slice of the batch) for each global batch.

        Every rank draws the permutation `ImageSet.batches` draws, from the same seeded generator, and keeps its
        equal share of each batch of `batch_size`. The last batch is cut to a multiple of the world size, so the
        averaged gradient is the global batch's mean: at most world_size - 1 images an epoch are skipped, other
        ones each epoch. One process gets exactly `ImageSet.batches`'s batches.
        """
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            size -= size % self.world_size
            if size:
                part = self.share(size)
                yield order[start : start + size][part], size, part

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        full, last = divmod(n, batch_size)
        return full + (last >= self.world_size)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over ranks (x itself in one process); the collective runs on this rank's device."""
        if not self.active:
            return x
        total = x.detach().to(self.device, copy=True)
        dist.all_reduce(total)
        return total.to(x.device)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value, on every rank (any picklable object)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value, in rank order, on every rank."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def on_main(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs fn on rank 0 only (e.g. preparing the run directory); a UsageError it raises is raised on every
        rank, so all ranks stop together with the same one-line message instead of waiting for rank 0."""
        error = None
        if self.is_main:
            try:
                fn(*args)
            except UsageError as raised:
                error = raised
        error = self.broadcast(error)
        if error is not None:
            raise error

    def should_stop(self, loss_sum: torch.Tensor) -> tuple[float, bool]:
        """(the loss sum over ranks, nan if any rank's is not finite; whether any rank was asked to stop).

        Called at the same steps on every rank, so every rank takes the same decision at the same step.
        """
        if not self.active:
            return loss_sum.item(), False
        flags = self.sum(torch.stack([loss_sum.detach().float(), loss_sum.new_tensor(float(_stop.requested))]))
        value, stop = flags.tolist()
        _stop.final = stop > 0 or not math.isfinite(value)  # stopping together: later signals are ignored
        return value, stop > 0

    def sync_batchnorm(self, model: nn.Module, wanted: bool) -> nn.Module:
        """--sync-bn: BatchNorm statistics over the global batch instead of each rank's share."""
        if not wanted:
            return model
        if not self.active:
            console.say("--sync-bn: one process already normalises over the whole batch; nothing to convert")
            return model
        if self.device.type != "cuda":
            raise UsageError(
                f"--sync-bn needs CUDA devices: PyTorch's SyncBatchNorm cannot synchronise {self.device.type} "
                "tensors; drop --sync-bn (each rank then normalises over its own share of the batch)"
            )
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training loss runs through: DDP over `model` under torchrun, else `model` itself.

        DDP's backward averages the weight gradients over ranks. Attacks and validation use `model` directly
        with frozen weights: no DDP forward, so its hooks stay disarmed and no gradient is all-reduced then
        (tests/test_distributed_train.py counts the all-reduces).
        """
        if not self.active:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def weights_digest(model: nn.Module) -> str:
    """sha256 of the model's parameters (not its buffers: without --sync-bn each rank's BatchNorm running
    statistics follow its own last batch, and rank 0's are the ones saved)."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Group]:
    """The training job this process belongs to: starts the process group under torchrun, stops it after."""
    if not launched():
        yield Group(device)
        return
    owned = not dist.is_initialized()  # a caller that started the group itself keeps it
    group = _start(device, owned)
    restore = _catch_signals()
    console.set_quiet(not group.is_main)
    try:
        yield group
    finally:
        console.set_quiet(False)
        restore()
    if owned:  # only after a clean end: after a lost peer, NCCL's teardown can wait for it
        dist.destroy_process_group()


def _start(device: torch.device, owned: bool) -> Group:
    rank, local_rank, world_size = (int(os.environ[name]) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"torchrun started local rank {local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                "set --nproc_per_node to at most the GPU count"
            )
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UsageError(f"torchrun training runs on cuda (nccl) or cpu (gloo), not {device.type}; pass --device cpu")
    if owned:
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return Group(device, rank, world_size, dist.get_backend())


def _on_signal(signum: int, frame: object) -> None:
    """First Ctrl-C / SIGTERM: every rank stops together at the next check (all-reduced), run.json saying so.
    Second: stop this rank now. Later ones (torchrun forwards its own) are ignored so that last writes finish."""
    if _stop.final:
        return
    if _stop.requested:
        _stop.final = True
        raise KeyboardInterrupt
    _stop.requested = True


def _catch_signals() -> Callable[[], None]:
    _stop.requested = _stop.final = False
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return lambda: None
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore
