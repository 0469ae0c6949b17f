"""How honest and how fast the worst case is: the autoattack-grade suite against ART's own `AutoAttack`
(its defaults) and torchattacks' `AutoAttack(version="standard")`, and what counting every iterate adds.

All three attack the same n test images of one model (the sweep's seeded subset) at the dataset's Linf eps;
each figure is the accuracy left (lower is a stronger evaluation) and the wall time of one run. These runs
take minutes each, so they run once per round (`repeats` rounds, interleaved), not many times.

The iterate rows sweep the standard suite's PGD-40 (Linf and L2) and APGD-CE at the same eps twice, with
`any_iterate` on (robustcnn's default: an example is broken when any iterate in the ball is misclassified)
and off (ART's returned iterate only), and report the difference in accuracy.
"""

from __future__ import annotations

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
ACCURACY_SLACK_PP = 0.5  # ... and leave no more than this many points above either AutoAttack


def measure(
    models: list[Path], n: int, device: torch.device, repeats: int, baselines: bool = True, seed: int = 0
) -> list[Row]:
    """The AutoAttack comparison on the last model (the robust demo model); the iterate rows on every model.
    Without `baselines` (a smoke run) only our suite is timed: ART's AutoAttack alone takes minutes."""
    rows = _compare(models[-1], n, device, repeats, baselines, seed)
    for path in models:
        rows += _iterate_rows(path, n, seed, device)
    return rows


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
    x_adv = attack(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)).cpu().numpy()
    return _accuracy(model, x_adv, y, device)


def _accuracy(model, x_adv: np.ndarray, y: np.ndarray, device: torch.device) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_adv).to(device)).argmax(1).cpu().numpy()
    return float((predicted == y).mean())


def _autoattack_rows(timed: dict, what: str, repeats: int) -> list[Row]:
    ours, art, ta = (timed[k] for k in ("ours", "art", "torchattacks"))
    note = f"accuracy left: ours {ours.value:.1%}, ART {art.value:.1%}, torchattacks {ta.value:.1%}"
    return [
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


ITERATE_SUITE = """
description = "PGD-40 (Linf, L2) and APGD-CE at the dataset's eps, every iterate counting: {any}"
[[attack]]
name = "pgd-linf"
type = "pgd"
norm = "inf"
eps_fraction = [1.0]
steps = 40
any_iterate = {any}
[[attack]]
name = "pgd-l2"
type = "pgd"
norm = "2"
eps_fraction = [1.0]
steps = 40
any_iterate = {any}
[[attack]]
name = "apgd-ce"
type = "apgd-ce"
norm = "inf"
eps_fraction = [1.0]
steps = 100
any_iterate = {any}
"""


def _iterate_rows(model_path: Path, n: int, seed: int, device: torch.device) -> list[Row]:
    accuracy = {}
    with tempfile.TemporaryDirectory(prefix="bench-iterate-") as folder:
        for any_iterate in ("true", "false"):
            suite = Path(folder) / f"iterate-{any_iterate}.toml"
            suite.write_text(ITERATE_SUITE.format(any=any_iterate))
            started = time.perf_counter()
            results = robustcnn.sweep(
                [str(model_path)], suite=str(suite), n=n, seed=seed, out=str(Path(folder) / any_iterate),
                device=str(device), report=False, probe=0,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            attacks = results[results.kind == "attack"]
            accuracy[any_iterate] = (dict(zip(attacks.attack, attacks.accuracy, strict=True)), seconds)
    every, last = accuracy["true"], accuracy["false"]
    return [
        Row("autoattack", f"any iterate vs last iterate: {attack} ({model_path.name}, n={n}, dataset eps)",
            100 * (every[0][attack] - last[0][attack]), "pp", seconds=every[1], baseline="last iterate only (ART)",
            baseline_seconds=last[1], repeats=1,
            note=f"accuracy {every[0][attack]:.1%} counting every iterate, {last[0][attack]:.1%} the last only")
        for attack in every[0]
    ]  # fmt: skip
