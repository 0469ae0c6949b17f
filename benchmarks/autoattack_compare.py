"""How honest and how fast the worst case is: the autoattack-grade suite against the official AutoAttack (Croce &
Hein's `autoattack` package, version "standard", FAB-T included), ART's own `AutoAttack` (its defaults) and
torchattacks' `AutoAttack(version="standard")`, and what counting every iterate adds.

The official AutoAttack is a reference, never a dependency: it is not on the package index, so it runs only when
AUTOATTACK_PATH names a folder holding its source (the `autoattack` folder of github.com/fra31/auto-attack; it needs
only torch and numpy); without it its row says so.

All three attack the same n test images of one model (the sweep's seeded subset) at the dataset's Linf eps;
each figure is the accuracy left (lower is a stronger evaluation) and the wall time of one run. These runs
take minutes each, so they run once per round (`repeats` rounds, interleaved), not many times.

The iterate rows run PGD-40 (Linf and L2) and APGD-CE at the dataset's eps once each and read two numbers
off that one run: the accuracy ART's returned iterate leaves, and the accuracy when every iterate inside
the ball counts (robustcnn's default, AutoAttack's rule); and what the hook that sees the iterates costs.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import robustcnn
from benchmarks.table import Row
from benchmarks.timing import interleaved
from robustcnn.runs import load_run
from robustcnn.sweep.subjects import test_subset

SPEED_TARGET = 4.0  # the autoattack-grade suite must be at least this many times faster than ART's AutoAttack
OFFICIAL_TARGET = 1.0  # ... and take no longer than the official AutoAttack
ACCURACY_SLACK_PP = 0.5  # ... and leave no more than this many points above the lowest of the AutoAttacks
OFFICIAL_PATH = "AUTOATTACK_PATH"  # the environment variable naming the official AutoAttack's source folder


def measure(
    model: Path, n: int, device: torch.device, repeats: int, baselines: bool = True, seed: int = 0
) -> list[Row]:
    """The AutoAttack comparison on one model (the robust demo model). Without `baselines` (a smoke run) only
    our suite is timed: ART's AutoAttack alone takes minutes."""
    return _compare(model, n, device, repeats, baselines, seed)


def measure_iterates(models: list[Path], n: int, device: torch.device, seed: int = 0) -> list[Row]:
    """What counting every iterate changes, on every model."""
    return [row for path in models for row in _iterate_rows(path, n, seed, device)]


def _compare(model_path: Path, n: int, device: torch.device, repeats: int, baselines: bool, seed: int) -> list[Row]:
    run = load_run(model_path)
    eps, classes = run.dataset.threat_model.eps, run.dataset.num_classes
    dataset = run.meta["config"]["dataset"]
    test = robustcnn.load_dataset(dataset, "test")
    subset = test.subset(test_subset(len(test), n, seed, dataset))  # the images the sweep attacks
    x, y = subset.images().numpy(), subset.y.numpy()  # (n, C, H, W) in [0, 1], (n,)
    variants = {"ours": lambda _: _ours(model_path, n, seed, device)}
    if baselines:
        variants["art"] = lambda _: _art(model_path, x, y, eps, device, classes)
        variants["torchattacks"] = lambda _: _torchattacks(model_path, x, y, eps, device, classes)
        if os.environ.get(OFFICIAL_PATH):
            variants["official"] = lambda _: _official(model_path, x, y, eps, device)
    timed = interleaved(variants, repeats, device)
    what = f"{run.path.name}, n={n}, Linf eps {eps:g}"
    if not baselines:
        ours = timed["ours"]
        note = "smoke run: no AutoAttack baselines"
        return [Row("autoattack", f"autoattack-grade worst case ({what})", 100 * ours.value, "%",
                    seconds=ours.median, repeats=repeats, note=note)]  # fmt: skip
    return _autoattack_rows(timed, what, repeats)


def _ours(model_path: Path, n: int, seed: int, device: torch.device) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-aa-") as out:
        results = robustcnn.sweep(
            [str(model_path)], suite="autoattack-grade", n=n, seed=seed, out=out, device=str(device), report=False
        )
    return float(results[results.kind == "worst-case"].accuracy.min())


def _art(model_path: Path, x: np.ndarray, y: np.ndarray, eps: float, device: torch.device, classes: int) -> float:
    """ART's AutoAttack as a user calls it: its default attacks (APGD-CE and APGD-DLR with 5 restarts,
    DeepFool, Square 5000 x 5), true labels, the model as `robustcnn.load_model` returns it."""
    from art.attacks.evasion import AutoAttack

    from robustcnn.attacks.art import art_classifier

    model = robustcnn.load_model(model_path, device=device)
    classifier = art_classifier(model, x.shape[1:], classes, device)
    torch.manual_seed(0)
    np.random.seed(0)
    x_adv = AutoAttack(classifier, norm=np.inf, eps=eps).generate(x, y)
    return _accuracy(model, x_adv, y, device)


def _torchattacks(model_path, x: np.ndarray, y: np.ndarray, eps: float, device: torch.device, classes: int) -> float:
    import torchattacks

    model = robustcnn.load_model(model_path, device=device)
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=classes, seed=0)
    x_adv = attack(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)).detach().cpu().numpy()
    return _accuracy(model, x_adv, y, device)


def _official(model_path: Path, x: np.ndarray, y: np.ndarray, eps: float, device: torch.device) -> float:
    """The official AutoAttack as its README runs it: version "standard" (APGD-CE, APGD-T, FAB-T, Square), seed 0,
    the batch size robustcnn's sweep uses on the device."""
    from robustcnn.sweep.subjects import default_batch_size

    folder = os.environ[OFFICIAL_PATH]
    if folder not in sys.path:
        sys.path.insert(0, folder)
    from autoattack import AutoAttack

    model = robustcnn.load_model(model_path, device=device)
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=str(device), seed=0, verbose=False)
    x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    with contextlib.redirect_stdout(io.StringIO()):  # its checks print advice on every run
        x_adv = adversary.run_standard_evaluation(x_t, y_t, bs=default_batch_size(device))
    return _accuracy(model, x_adv.detach().cpu().numpy(), y, device)


def _accuracy(model, x_adv: np.ndarray, y: np.ndarray, device: torch.device) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_adv).to(device)).argmax(1).cpu().numpy()
    return float((predicted == y).mean())


def _autoattack_rows(timed: dict, what: str, repeats: int) -> list[Row]:
    ours, art, ta = (timed[k] for k in ("ours", "art", "torchattacks"))
    official = timed.get("official")
    left = f"official {official.value:.1%}, " if official else ""
    note = f"accuracy left: ours {ours.value:.1%}, {left}ART {art.value:.1%}, torchattacks {ta.value:.1%}"
    lowest = min(t.value for t in (art, ta, official) if t is not None)
    return [
        *_official_rows(ours, official, lowest, what, repeats, note),
        Row("autoattack", f"autoattack-grade suite vs ART AutoAttack (defaults), time ({what})",
            art.median / ours.median, "x faster", target=f">= {SPEED_TARGET:g}", seconds=ours.median,
            spread=ours.spread, baseline="art.attacks.evasion.AutoAttack, defaults", baseline_seconds=art.median,
            baseline_spread=art.spread, repeats=repeats, note=note),
        Row("autoattack", f"worst case: ours - ART AutoAttack ({what})", 100 * (ours.value - art.value), "pp",
            target=f"<= {ACCURACY_SLACK_PP:g}", repeats=repeats, note="negative: ours breaks more examples"),
        Row("autoattack", f"worst case: ours - torchattacks AutoAttack standard ({what})",
            100 * (ours.value - ta.value), "pp", target=f"<= {ACCURACY_SLACK_PP:g}", seconds=ta.median, repeats=repeats,
            note=f"torchattacks took {ta.median:.0f} s; negative: ours breaks more examples"),
    ]  # fmt: skip


def _official_rows(ours, official, lowest: float, what: str, repeats: int, note: str) -> list[Row]:
    lowest_row = Row(
        "autoattack",
        f"worst case: ours - the lowest of the AutoAttacks ({what})",
        100 * (ours.value - lowest),
        "pp",
        target=f"<= {ACCURACY_SLACK_PP:g}",
        repeats=repeats,
        note=note,
    )
    if official is None:
        missing = f"not run: {OFFICIAL_PATH} names no folder with the official AutoAttack's source"
        return [
            Row(
                "autoattack",
                f"autoattack-grade suite vs the official AutoAttack, time ({what})",
                math.nan,
                "x faster",
                note=missing,
            ),
            lowest_row,
        ]
    return [
        Row("autoattack", f"autoattack-grade suite vs the official AutoAttack (standard), time ({what})",
            official.median / ours.median, "x faster", target=f">= {OFFICIAL_TARGET:g}", seconds=ours.median,
            spread=ours.spread, baseline="autoattack.AutoAttack, version standard (FAB-T included)",
            baseline_seconds=official.median, baseline_spread=official.spread, repeats=repeats, note=note),
        lowest_row,
    ]  # fmt: skip


ITERATE_ATTACKS = (("pgd", "inf", {"steps": 40}), ("pgd", "2", {"steps": 40}), ("apgd-ce", "inf", {"steps": 100}))


def _iterate_rows(model_path: Path, n: int, seed: int, device: torch.device) -> list[Row]:
    """Paired: one attack run gives both numbers (ART's returned iterate, and every iterate the hook saw);
    a second run of the same attack from the same seed without the hook times what the hook costs."""
    from robustcnn.attacks import ATTACKS, Target
    from robustcnn.attacks.art import IterateRecorder, art_classifier
    from robustcnn.devices import fast_layout
    from robustcnn.sweep.cells import predict
    from robustcnn.threat import Norm

    run = load_run(model_path)
    info, dataset = run.dataset, run.meta["config"]["dataset"]
    model = fast_layout(run.model("best", device), device).requires_grad_(False)  # as the sweep holds it
    batch = 1024 if device.type == "cuda" else 128
    target = Target(art_classifier(model, info.shape, info.num_classes, device), model, device, batch, info.num_classes)
    test = robustcnn.load_dataset(dataset, "test")
    subset = test.subset(test_subset(len(test), n, seed, dataset))
    x, y = subset.images().numpy(), subset.y.numpy()
    keep = predict(target, x) == y  # attacks run on the correctly classified examples, as in a sweep
    x, y = x[keep], y[keep]
    rows = []
    for name, norm_text, params in ITERATE_ATTACKS:
        norm = Norm.parse(norm_text)
        attack = ATTACKS.get(name)(name, norm, ATTACKS.get(name).parse_params(params, ""), target)
        eps = info.reference_eps(norm)
        attack.run(x[:batch], y[:batch], eps)  # warm-up, untimed: the first call pays for set-up
        torch.manual_seed(seed), np.random.seed(seed)
        started = time.perf_counter()
        last, every = np.empty_like(x), np.empty_like(x)
        for part in np.array_split(np.arange(len(x)), max(1, -(-len(x) // batch))):  # batches, as the sweep runs
            with IterateRecorder(model, x[part], y[part], eps, norm.art) as recorder:
                last[part] = attack.run(x[part], y[part], eps)
            every[part] = recorder.apply(last[part])
        hooked = time.perf_counter() - started
        torch.manual_seed(seed), np.random.seed(seed)
        started = time.perf_counter()
        for part in np.array_split(np.arange(len(x)), max(1, -(-len(x) // batch))):
            attack.run(x[part], y[part], eps)
        bare = time.perf_counter() - started
        acc_last, acc_every = ((predict(target, a) == y).sum() / n for a in (last, every))
        rows.append(
            Row("iterate", f"any iterate vs last iterate: {name} {norm.label} ({run.path.name}, n={n}, eps {eps:g})",
                100 * (acc_every - acc_last), "pp", seconds=hooked, baseline="the same run without the hook",
                baseline_seconds=bare, repeats=1,
                note=f"accuracy {acc_every:.1%} counting every iterate, {acc_last:.1%} the last only (same run); "
                f"the hook costs {hooked / bare:.2f}x")
        )  # fmt: skip
    return rows
