"""Training speed: one epoch of each method through `robustcnn.train`, as a ratio to a clean epoch.

Each variant trains one epoch of a fresh run (eps at full size from the first step: eps_warmup 0).
`_Trainer._epoch` (the batches: attack, loss, optimiser step) and the per-epoch `Validator` (clean,
FGSM and PGD-10 accuracy on the held-out images) are timed separately by wrapping them, so the table
gives the training part alone and the epoch with its validation.

Ideals, in clean training steps per batch (forward + backward + optimiser step):
- PGD-k: k attack steps (forward + backward wrt the input) + 1 training step = k + 1.
- FGSM-RS, N-FGSM: 1 attack step + 1 training step = 2.
- TRADES: k attack steps + 2 training steps (the loss runs the model on x and on x_adv) = k + 2; the
  no-grad forward pass that gives the soft labels (about a third of a step) is not counted.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import robustcnn
from benchmarks.table import Row
from benchmarks.timing import Timed, interleaved, sync
from robustcnn.train.loop import _Trainer
from robustcnn.train.validate import Validator

PGD_AT_TARGET = 1.15  # PGD-k AT epoch <= this x (k + 1) clean epochs
FGSM_RS_TARGET = 2.2  # FGSM-RS (and N-FGSM) epoch <= this x a clean epoch

METHODS = {
    "clean": {},
    "pgd": {"adv": True, "adv_method": "pgd"},
    "fgsm-rs": {"adv": True, "adv_method": "fgsm-rs"},
    "trades": {"adv": True, "adv_method": "trades"},
    "n-fgsm": {"adv": True, "adv_method": "n-fgsm"},
}


@contextlib.contextmanager
def stopwatch(owner: type, name: str, laps: list[float], device: torch.device) -> Iterator[None]:
    """Appends the seconds of every call of `owner.name` to `laps` while the block runs."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(self, *args, **kwargs):
        sync(device)
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            sync(device)
            laps.append(time.perf_counter() - started)

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


def one_epoch(method: str, settings: dict, device: torch.device) -> dict[str, float]:
    """Seconds of the training part and of the validation of one epoch of `method`."""
    train_laps: list[float] = []
    val_laps: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-train-") as tmp,
        stopwatch(_Trainer, "_epoch", train_laps, device),
        stopwatch(Validator, "__call__", val_laps, device),
    ):
        out = str(Path(tmp) / "run")
        robustcnn.train(**settings, **METHODS[method], epochs=1, eps_warmup=0, device=str(device), out=out)
    return {"train": train_laps[0], "validation": val_laps[0]}


def measure(settings: dict, device: torch.device, repeats: int, warmup: bool = True) -> list[Row]:
    """`settings`: TrainConfig fields shared by every method (dataset, train_size, val_size)."""
    variants = {name: lambda _, name=name: one_epoch(name, settings, device) for name in METHODS}
    if warmup:
        one_epoch("clean", settings, device)  # dataset cache, first-call costs
    timed = interleaved(variants, repeats, device)
    train = {name: Timed([v["train"] for v in t.values]) for name, t in timed.items()}
    with_val = {name: Timed([v["train"] + v["validation"] for v in t.values]) for name, t in timed.items()}
    validation = Timed([v["validation"] for v in timed["clean"].values])
    k = attack_steps(settings)
    ideals = {  # method -> (ideal in clean epochs, label, target: (row, at most))
        "pgd": (k + 1, f"PGD-{k} AT", ("x ideal", PGD_AT_TARGET)),
        "fgsm-rs": (2, "FGSM-RS", ("x clean", FGSM_RS_TARGET)),
        "trades": (k + 2, f"TRADES (PGD-{k})", None),  # no target set: shown for context
        "n-fgsm": (2, "N-FGSM", ("x clean", FGSM_RS_TARGET)),
    }
    size = settings["dataset"] + (f", {settings['train_size']} images" if settings.get("train_size") else "")
    clean = train["clean"]
    rows = [
        Row("train", f"clean epoch, training part ({size}, default batch size)", clean.median, "s",
            seconds=clean.median, spread=clean.spread, repeats=repeats, note="this section's baseline"),
    ]  # fmt: skip
    for method, (ideal, label, target) in ideals.items():
        rows += _method_rows(train[method], clean, ideal, label, target, repeats)
    for method, (ideal, label, _) in ideals.items():
        rows.append(
            Row("train", f"{label} epoch / clean epoch, validation included", with_val[method].median /
                with_val["clean"].median, "x clean", seconds=with_val[method].median, spread=with_val[method].spread,
                baseline="clean epoch + validation", baseline_seconds=with_val["clean"].median,
                baseline_spread=with_val["clean"].spread, repeats=repeats,
                note=f"ideal {ideal}x if validation were free")
        )  # fmt: skip
    rows.append(
        Row("train", "per-epoch validation (clean + FGSM + PGD-10 on the held-out images)", validation.median, "s",
            seconds=validation.median, spread=validation.spread, repeats=repeats,
            note=f"{validation.median / clean.median:.2f}x a clean epoch's training part")
    )  # fmt: skip
    return rows


def _method_rows(part: Timed, clean: Timed, ideal: int, label: str, target: tuple | None, repeats: int) -> list[Row]:
    """The epoch as a multiple of a clean epoch and of its ideal; `target` = (unit of the row it applies to, bound)."""
    ratio = part.median / clean.median
    common = {"seconds": part.median, "spread": part.spread, "repeats": repeats, "baseline_spread": clean.spread}

    def bound(unit: str) -> str:
        return f"<= {target[1]:g}" if target and target[0] == unit else ""

    return [
        Row("train", f"{label} epoch / clean epoch, training part", ratio, "x clean", target=bound("x clean"),
            baseline="clean epoch, training part", baseline_seconds=clean.median, note=f"ideal {ideal}x", **common),
        Row("train", f"{label} epoch / ideal ({ideal} clean epochs), training part", ratio / ideal, "x ideal",
            target=bound("x ideal"), baseline=f"{ideal} x clean epoch", baseline_seconds=ideal * clean.median,
            **common),
    ]  # fmt: skip


def attack_steps(settings: dict) -> int:
    """k of PGD-k adversarial training with these settings (TrainConfig's default: 10)."""
    from robustcnn.data import dataset_info
    from robustcnn.train.config import resolve

    config = robustcnn.TrainConfig.from_dict({**settings, "adv": True})
    return resolve(config, dataset_info(config.dataset, config.data_dir, config.download)).attack_steps
