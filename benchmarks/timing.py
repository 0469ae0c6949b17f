"""How every figure is measured: interleaved repetitions, medians, and the machine they ran on.

Absolute seconds on a shared CPU are noise; ratios of variants timed round by round on the same
machine are not. Each round runs every variant once, in an order rotated from round to round, so a
burst of load from another process hits all variants alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "adversarial-robustness-toolbox", "torchattacks", "numpy")


@dataclass
class Timed:
    """The seconds of each repetition of one variant, and what each returned."""

    seconds: list[float] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def value(self) -> Any:
        return self.values[0]

    @property
    def spread(self) -> str:
        """Every round's seconds, in order, to show how much the figure moved."""
        return rounds(self.seconds)


def sync(device: torch.device) -> None:
    """CUDA kernels run asynchronously: wait for them before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(variants: dict[str, Callable[[int], Any]], repeats: int, device: torch.device) -> dict[str, Timed]:
    """Times each variant `repeats` times, one round at a time, rotating the order every round.

    Each variant is called with the round's number (0, 1, ...), e.g. to seed that round.
    """
    names = list(variants)
    timed = {name: Timed() for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            started = time.perf_counter()
            value = variants[name](round_)
            sync(device)
            timed[name].seconds.append(time.perf_counter() - started)
            timed[name].values.append(value)
    return timed


def rounds(seconds: list[float]) -> str:
    return " / ".join(f"{s:.3g}" for s in seconds)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "robustcnn"], cwd=ROOT, capture_output=True)
    except OSError:
        return "unknown"
    return sha.stdout.strip() + ("+uncommitted changes in robustcnn/" if dirty.stdout.strip() else "")


def machine(device: torch.device) -> dict[str, Any]:
    """The evidence header: what ran the figures (airbench-style), including the load while they ran."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU-only figures)"
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "accelerator": accelerator,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
        "robustcnn_git": _git_sha(),
        "load_before": load_average(),
    }


def load_average() -> str:
    """1/5/15-minute load averages: above the core count, other processes were competing for the CPU."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


class OtherLoad:
    """How many cores other processes kept busy, on average, while the block ran (Linux; None elsewhere).

    The system's busy CPU time from /proc/stat minus this process's own (and its children's), over
    the wall time: 0 on an idle machine, up to the core count when someone else's tests ran alongside.
    """

    def __enter__(self) -> OtherLoad:
        self.cores: float | None = None
        self._start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, busy, own = self._start
        end_busy = _busy_seconds()
        if busy is not None and end_busy is not None:
            others = (end_busy - busy) - (_own_seconds() - own)
            self.cores = max(0.0, others / (time.perf_counter() - wall))


def _busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
