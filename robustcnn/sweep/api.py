"""`sweep()`: attack trained models over a suite and return the tidy results as a DataFrame."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from robustcnn.console import say
from robustcnn.devices import resolve_device
from robustcnn.errors import RunFailed, UsageError
from robustcnn.fileio import remove_stale_temps
from robustcnn.results import REPORT_FILE
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.gate import check_gates_cover, failed_gates, parse_gate
from robustcnn.sweep.runner import Sweep, plan_grids, worst_case_name
from robustcnn.sweep.subjects import load_subjects
from robustcnn.sweep.suite import load_suite


class GateFailed(RunFailed):
    """A --fail-under gate was not met (exit code 1)."""


def prepare_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to --out {str(out)!r}: {error.strerror or error}") from None
    for folder in (out, out / "cells", out / "gallery", out / "patches"):
        remove_stale_temps(folder)  # left by a sweep that was killed mid-write
    return out


def sweep(models: Any, config: SweepConfig | None = None, **overrides: Any) -> pd.DataFrame:
    """Attacks each model with every attack of the suite at every eps.

    `robustcnn.sweep(["runs/mnist-adv", my_module, "nets.py:build@weights=nets.pt"], dataset="mnist5k")`:
    a model is a run directory (path or `Run`), an `nn.Module`, a spec string, or a `robustcnn.Model`
    saying more about one (name, weights, normalisation, input range, which output). Without `out` the
    results go to a temporary folder and no report is written. Raises `GateFailed` when a `fail_under`
    gate is not met (after everything is written).
    """
    if not isinstance(models, (list, tuple)):
        models = [models]
    if config is None:
        temporary = "out" not in overrides
        if temporary:
            overrides = {**overrides, "out": tempfile.mkdtemp(prefix="robustcnn-sweep-"), "report": False}
        config = SweepConfig.from_dict(overrides)
    elif overrides:
        parsed = SweepConfig.from_dict(overrides)
        config = config.replace(**{k: getattr(parsed, k) for k in overrides})
    suite = load_suite(config.suite)
    gates = [parse_gate(text) for text in config.fail_under]
    device = resolve_device("cpu" if config.ray else config.device)  # with Ray, tasks take config.device
    if config.ray:
        from robustcnn.sweep.on_ray import require_ray

        require_ray()
    subjects = load_subjects(list(models), config, suite.n, device)
    grids = plan_grids(subjects, suite)
    check_gates_cover(gates, _gate_targets(grids, suite))
    with _cluster(config):
        return _run(config, suite, subjects, grids, gates, device)


def _cluster(config: SweepConfig):
    """Connected to Ray for the sweep when --ray says so (before --out is touched: no cluster, no files)."""
    if not config.ray:
        return contextlib.nullcontext()
    from robustcnn.sweep.on_ray import ray_session

    return ray_session(config)


def _run(config: SweepConfig, suite, subjects, grids, gates, device) -> pd.DataFrame:
    out = prepare_out(Path(config.out))  # after every check: a refused model or suite leaves --out untouched
    runner = Sweep(config, suite, subjects, out, grids)
    runner.write_manifest_start()
    where = f"Ray tasks (--ray {config.ray}, --device {config.device} in each)" if config.ray else str(device)
    share = f", shard {config.shard}" if config.shard else ""
    what = f"{len(subjects)} model(s) with suite {suite.name!r} ({runner.mode_label()}{share})"
    say(f"sweeping {what} on {where} -> {out}")
    results = runner.run()
    if not runner.complete:  # a shard done before the others: no report or gates on part of the cells
        say(f"{out}: this shard's cells are done; the results are complete once every shard has finished")
        return results
    if config.report:
        _write_report(out)
    failures = failed_gates(results, gates)
    if failures:
        raise GateFailed("gate not met: " + "; ".join(failures))
    return results


def _gate_targets(grids: dict[str, dict[str, tuple[float, ...]]], suite) -> dict[str, dict[str, list[float]]]:
    """Per model: every row name a gate may use, with the eps it will have."""
    targets = {}
    for model, by_attack in grids.items():
        names = {"clean": [0.0], **{k: list(v) for k, v in by_attack.items()}}
        for spec in suite.attacks:
            if spec.norm is not None:
                names.setdefault(worst_case_name(spec.norm.value), []).extend(by_attack[spec.name])
        targets[model] = names
    return targets


def _write_report(out: Path) -> None:
    try:
        from robustcnn.report import report
    except ImportError:  # the report package is optional for the sweep to work
        return
    path = report(out)
    say(f"report: {path if path else out / REPORT_FILE}")
