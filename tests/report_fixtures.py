"""Synthetic, contract-conforming sweep directories for the report's tests and benchmark.

    make_sweep_dir(tmp_path / "sweep", models=("std", "adv"), attacks=("fgsm", "pgd", "square"))

The default numbers pass every sanity check: accuracy falls with eps, iterative attacks beat FGSM, more
PGD steps change little, black-box is weaker than white-box and accuracy reaches 0 at Linf eps 0.5.
Tests break one property at a time with `set_accuracy` or an `accuracy=` function.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from robustcnn.results import COLUMNS, wilson_interval

# Attack presets: suite entries as the sweep writes them. "strength" only shapes the synthetic numbers.
ATTACKS: dict[str, dict[str, Any]] = {
    "fgsm": {"attack_type": "fgsm", "box": "white", "norm": "inf", "params": {}, "strength": 0.6},
    "pgd": {"attack_type": "pgd", "box": "white", "norm": "inf", "params": {"steps": 10, "restarts": 1},
            "strength": 1.0},
    "pgd-50": {"attack_type": "pgd", "box": "white", "norm": "inf", "params": {"steps": 50, "restarts": 1},
               "strength": 1.01},
    "apgd-ce": {"attack_type": "apgd-ce", "box": "white", "norm": "inf", "params": {"steps": 100}, "strength": 1.05},
    "apgd-dlr": {"attack_type": "apgd-dlr", "box": "white", "norm": "inf", "params": {"steps": 100}, "strength": 1.04},
    "square": {"attack_type": "square", "box": "black", "norm": "inf", "params": {"queries": 1000}, "strength": 0.8},
    "patch": {"attack_type": "patch", "box": "white", "norm": "", "params": {"target": 3, "steps": 200},
              "strength": 1.0},
}  # fmt: skip
DEFAULT_EPS = (0.0, 0.1, 0.2, 0.3)
PATCH_SCALES = (0.05, 0.1, 0.2, 0.3)
DIGITS = [str(i) for i in range(10)]

AccuracyFn = Callable[[str, str, float], float]  # (model, attack, eps or scale) -> accuracy


def hardness(models: list[str], model: str) -> float:
    """The first model is the least robust (a standard model); the last the most (adversarially trained)."""
    i = models.index(model)
    return 8.0 - 6.5 * i / max(1, len(models) - 1)


def default_accuracy(models: list[str], clean: float = 0.98) -> AccuracyFn:
    """clean * (1 - eps / 0.5) ** (hardness * strength): decreasing, 0 from Linf eps 0.5 on."""

    def accuracy(model: str, attack: str, eps: float) -> float:
        if attack == "clean":
            return clean
        strength = ATTACKS[attack]["strength"] if attack in ATTACKS else 1.0
        if attack == "worst-case":
            strength = 1.1
        return clean * (1 - min(eps / 0.5, 1.0)) ** (hardness(models, model) * strength)

    return accuracy


def row(model: str, kind: str, attack: str, accuracy: float, n: int, **fields: Any) -> dict[str, Any]:
    """One results.csv row with every column of the contract."""
    correct = round(accuracy * n)
    low, high = wilson_interval(correct, n)
    spec = ATTACKS.get(attack, {})
    base = {
        "model": model,
        "checkpoint_sha256": _digest(model),
        "dataset": "mnist5k",
        "arch": "smallcnn",
        "train_method": "standard" if model.startswith("std") else "pgd",
        "kind": kind,
        "attack": attack,
        "attack_type": spec.get("attack_type", attack),
        "box": spec.get("box", "none"),
        "params": json.dumps(spec.get("params", {}), separators=(",", ":")),
        "norm": spec.get("norm", ""),
        "eps": 0.0,
        "scale": math.nan,
        "n": n,
        "n_correct": correct,
        "accuracy": correct / n,
        "ci_low": low,
        "ci_high": high,
        "target_success": math.nan,
        "seconds": 0.5,
        "suite": "standard",
        "seed": 0,
        "cell": _digest(f"{model}|{attack}|{fields.get('eps')}|{fields.get('scale')}")[:16],
    }
    base.update(fields)
    return base


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_results(
    models: Iterable[str] = ("std", "adv"),
    attacks: Iterable[str] = ("fgsm", "pgd", "square"),
    eps: Iterable[float] = DEFAULT_EPS,
    n: int = 500,
    accuracy: AccuracyFn | None = None,
    scales: Iterable[float] = PATCH_SCALES,
    worst_case: bool = True,
    suite: str = "standard",
) -> pd.DataFrame:
    """A results table in the contract's column order. Attack names are keys of `ATTACKS`."""
    models, attacks, eps = list(models), list(attacks), [float(e) for e in eps]
    accuracy = accuracy or default_accuracy(models)
    rows = []
    for model in models:
        rows.append(row(model, "clean", "clean", accuracy(model, "clean", 0.0), n, attack_type="", norm=""))
        for attack in attacks:
            if ATTACKS[attack]["attack_type"] == "patch":
                rows += [_patch_row(model, attack, s, accuracy, n) for s in scales]
            else:
                rows += [row(model, "attack", attack, accuracy(model, attack, e), n, eps=e) for e in eps]
        eps_attacks = [a for a in attacks if ATTACKS[a]["attack_type"] != "patch"]
        if worst_case and eps_attacks:
            rows += [
                row(
                    model,
                    "worst-case",
                    "worst-case",
                    accuracy(model, "worst-case", e),
                    n,
                    eps=e,
                    norm="inf",
                    attack_type="",
                    params=json.dumps({"attacks": attacks}),
                )  # as the sweep writes it
                for e in eps
            ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["suite"] = suite
    return frame


def _patch_row(model: str, attack: str, scale: float, accuracy: AccuracyFn, n: int) -> dict[str, Any]:
    value = accuracy(model, attack, scale)
    clean = accuracy(model, "clean", 0.0)
    success = round(max(0.0, 1 - value / clean) * 0.9, 4)
    return row(model, "attack", attack, value, n, eps=math.nan, scale=scale, target_success=success)


def set_accuracy(frame: pd.DataFrame, model: str, attack: str, eps: float | None, value: float) -> pd.DataFrame:
    """Overwrites one cell's accuracy (n_correct and the Wilson interval follow). eps=None: every eps."""
    frame = frame.copy()
    where = (frame["model"] == model) & (frame["attack"] == attack)
    if eps is not None:
        where &= np.isclose(frame["eps"].astype(float), eps) | np.isclose(frame["scale"].astype(float), eps)
    if not where.any():
        raise KeyError(f"no row for {model}/{attack} at {eps}")
    for i in np.flatnonzero(where.to_numpy()):
        n = int(frame.at[i, "n"])
        correct = round(value * n)
        frame.at[i, "n_correct"] = correct
        frame.at[i, "accuracy"] = correct / n
        frame.at[i, "ci_low"], frame.at[i, "ci_high"] = wilson_interval(correct, n)
    return frame


def training_metrics(epochs: int = 6, collapse_at: int | None = None, adv: bool = True) -> list[dict[str, float]]:
    """Per-epoch rows as robustcnn.train writes them; `collapse_at` fakes catastrophic overfitting."""
    rows = []
    for epoch in range(1, epochs + 1):
        progress = 1 - math.exp(-epoch / 2)
        fgsm, pgd = (0.3 + 0.5 * progress, 0.2 + 0.5 * progress) if adv else (0.1, 0.0)
        if collapse_at is not None and epoch >= collapse_at:
            fgsm, pgd = 0.95, 0.02  # FGSM accuracy soars while PGD accuracy collapses (Wong et al. 2020)
        rows.append(
            {
                "epoch": epoch,
                "lr": 0.01 * (1 - (epoch - 1) / epochs),
                "eps": 0.3 if adv else 0.0,
                "train_loss": 2.3 * math.exp(-epoch / 2) + 0.1,
                "train_acc": 0.5 + 0.45 * progress,
                "val_acc": 0.5 + 0.47 * progress,
                "val_fgsm_acc": fgsm,
                "val_pgd_acc": pgd,
                "seconds": 12.5,
            }
        )
    return rows


def make_manifest(
    models: list[str],
    suite: str = "standard",
    class_names: list[str] | None = None,
    reference_eps: Any = None,
    metrics: bool = True,
    n: int = 500,
) -> dict[str, Any]:
    """A manifest shaped like the one robustcnn.sweep writes (format robustcnn-sweep/1)."""
    entries = []
    for i, model in enumerate(models):
        adv = i > 0 or len(models) == 1
        entries.append(
            {
                "id": model,
                "path": f"runs/{model}",
                "weights": "best",
                "sha256": _digest(model),
                "dataset": "mnist5k",
                "arch": "smallcnn",
                "method": "pgd" if adv else "standard",
                "threat_model": {"norm": "inf", "eps": 0.3},
                "class_names": class_names or DIGITS,
                "n": n,
                **({"training_metrics": training_metrics(adv=adv)} if metrics else {}),
            }
        )
    return {
        "format": "robustcnn-sweep/1",
        "status": "finished",
        "command": f"python -m robustcnn.sweep {' '.join(f'runs/{m}' for m in models)} --suite {suite} --out reports/x",
        "config": {"suite": suite, "seed": 0, "device": "auto", "weights": "best", "gallery": 8},
        "suite": {
            "name": suite,
            "path": f"attacks/{suite}.toml",
            "description": "synthetic suite for tests",
            "n": n,
            "reference_eps": reference_eps,
            "text": f'description = "synthetic suite for tests"\nname = "{suite}"\n',
        },
        "seed": 0,
        "mode": "nested",
        "device": "cpu",
        "batch_size": 128,
        "versions": {"python": "3.11.2", "robustcnn": "0.1.0", "torch": "2.14.1", "numpy": "2.4.6"},
        "git_sha": "0123456789abcdef0123456789abcdef01234567",
        "machine": {"platform": "Linux", "processor": "x86_64", "cpus": 2},
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:02:03+00:00",
        "seconds": 123.4,
        "models": entries,
    }


def write_gallery(path: Path, k: int = 6, eps: float = 0.3, attack: str = "pgd", channels: int = 1,
                  size: int = 28, seed: int = 0) -> None:  # fmt: skip
    """gallery/<model>.npz: x, x_adv (k, C, H, W) float32 in [0, 1], y, pred, pred_adv (k,), attack, eps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size  # (H, W)
    x = np.stack([np.exp(-((xx - rng.uniform(0.3, 0.7)) ** 2 + (yy - 0.5) ** 2) * 20) for _ in range(k)])  # (k, H, W)
    x = np.repeat(x[:, None], channels, axis=1).astype(np.float32)  # (k, C, H, W) in [0, 1]
    x_adv = np.clip(x + eps * np.sign(rng.standard_normal(x.shape)), 0, 1).astype(np.float32)
    y = np.arange(k, dtype=np.int64) % 10
    pred_adv = (y + 1 + np.arange(k) % 2) % 10
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, x_adv=x_adv, y=y, pred=y.copy(), pred_adv=pred_adv, attack=np.array(attack), eps=np.array(eps))


def write_patch(path: Path, size: int = 16) -> None:
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = np.stack([xx * 255 // size, yy * 255 // size, ((xx + yy) % 4) * 60], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)


def make_sweep_dir(
    path: str | Path,
    models: Iterable[str] = ("std", "adv"),
    attacks: Iterable[str] = ("fgsm", "pgd", "square", "patch"),
    eps: Iterable[float] = DEFAULT_EPS,
    *,
    n: int = 500,
    accuracy: AccuracyFn | None = None,
    results: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    suite: str = "standard",
    class_names: list[str] | None = None,
    reference_eps: Any = None,
    training: bool = True,
    gallery: bool = True,
    patch_images: bool = True,
    manifest: dict[str, Any] | None = None,
    write_manifest: bool = True,
) -> Path:
    """Writes results.csv, manifest.json, gallery/<model>.npz and patches/<model>__<attack>.png.

    `results` edits the table before it is written; `manifest` updates the manifest's top-level keys.
    """
    path, models, attacks = Path(path), list(models), list(attacks)
    path.mkdir(parents=True, exist_ok=True)
    frame = make_results(models, attacks, eps, n=n, accuracy=accuracy, suite=suite)
    frame = results(frame) if results else frame
    frame.to_csv(path / "results.csv", index=False)
    if write_manifest:
        data = make_manifest(models, suite, class_names, reference_eps, training, n)
        data.update(manifest or {})
        (path / "manifest.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    for i, model in enumerate(models):
        if gallery and "/" not in model:
            write_gallery(path / "gallery" / f"{model}.npz", seed=i)
        for attack in attacks:
            if patch_images and ATTACKS[attack]["attack_type"] == "patch" and "/" not in model:
                write_patch(path / "patches" / f"{model}__{attack}.png")
    return path


# --- a real sweep of many models: what a new user's 20-model page looks like -----------------------------------
MANY_NETS_PY = '''
"""Small models for the report's many-model test: a linear classifier, briefly trained, one per seed."""
import torch
from torch import nn

from robustcnn.data import load_dataset


def tiny(seed=0):
    g = torch.Generator().manual_seed(seed)
    data = load_dataset("mnist5k", "train")
    index = torch.randperm(len(data.y), generator=g)[:256]
    x, y = data.images(index), data.y[index]  # (256, 1, 28, 28) in [0, 1], (256,)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        model[1].weight.normal_(0, 0.01, generator=g)
        model[1].bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2 + seed):  # the seeds differ in training steps too: distinct curves
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()
'''
MANY_SUITE_TOML = """
description = "Many-model report fixture: FGSM and PGD-3 (Linf) at 4 radii up to the dataset eps, and a 2-step patch."
n = 100

[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps_fraction = [0.1, 0.25, 0.5, 1.0]

[[attack]]
name = "pgd"
type = "pgd"
norm = "inf"
eps_fraction = [0.1, 0.25, 0.5, 1.0]
steps = 3

[[attack]]
name = "patch"
type = "patch"
scales = [0.2, 0.4]
iterations = 2
train_images = 8
"""


def many_models_sweep(path: str | Path, count: int = 20, n: int = 100) -> Path:
    """A real sweep (torch, ART) of `count` briefly trained linear models on mnist5k, report included: about
    15 s for 20 models on 2 cores. Each model is `nets.py:tiny@name=mNN@model-arg=seed=NN`."""
    import robustcnn

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "nets.py").write_text(MANY_NETS_PY, encoding="utf-8")
    (path / "suite.toml").write_text(MANY_SUITE_TOML, encoding="utf-8")
    specs = [f"{path / 'nets.py'}:tiny@name=m{i:02d}@model-arg=seed={i}" for i in range(count)]
    out = path / "sweep"
    robustcnn.sweep(specs, suite=str(path / "suite.toml"), dataset="mnist5k", n=n, out=str(out), device="cpu")
    return out
