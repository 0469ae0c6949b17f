"""`sweep()`: attack trained models over a suite and return the tidy results as a DataFrame (`sweep_rows`: as rows)."""

from __future__ import annotations

import contextlib
import json
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustcnn.console import say
from robustcnn.devices import resolve_device
from robustcnn.errors import RunFailed, UsageError
from robustcnn.fileio import TEMP_SUFFIX, is_temp, remove_stale_temps
from robustcnn.results import COLUMNS, MANIFEST_FILE, REPORT_FILE
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.gate import check_gates_cover, failed_gates, parse_gate
from robustcnn.sweep.runner import Sweep, plan_grids, worst_case_name
from robustcnn.sweep.store import CELLS, LOCK_FILE, check_lock_file
from robustcnn.sweep.subjects import load_subjects
from robustcnn.sweep.suite import load_suite


class GateFailed(RunFailed):
    """A --fail-under gate was not met (exit code 1)."""


SWEEP_FORMAT = "robustcnn-sweep/"  # how the "format" of a sweep's manifest.json starts
MAX_MANIFEST_BYTES = 64 << 20  # a manifest with every model's training log is a few MB; a larger one is not ours
OWN_FOLDERS = (CELLS, "gallery", "patches")  # what a sweep makes before its manifest: may be there, empty


def check_out(out: Path) -> None:
    """Read-only, before anything is written: --out must be new, empty, or a folder a sweep wrote (it then resumes).

    Any other folder is refused: its results.csv, report.html and manifest.json would be replaced.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a directory")
    if not out.is_dir():
        return
    if not is_sweep_folder(out):
        try:
            other = _foreign_entry(out)
        except OSError as error:
            raise UsageError(f"cannot read --out {str(out)!r}: {error.strerror or error}") from None
        if other is not None:
            raise UsageError(
                f"--out {str(out)!r} holds {other!r} and no sweep's {MANIFEST_FILE}: robustcnn writes only into "
                "a new or empty folder, or one a sweep wrote (to resume it); pick another --out"
            )
    check_lock_file(out / CELLS / LOCK_FILE)


def is_sweep_folder(out: Path) -> bool:
    """Whether `out` holds the manifest.json of a sweep (a regular file, never a link followed)."""
    path = out / MANIFEST_FILE
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
            return False
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not UTF-8, not JSON (JSONDecodeError is a ValueError)
        return False
    return isinstance(manifest, dict) and str(manifest.get("format", "")).startswith(SWEEP_FORMAT)


def _foreign_entry(out: Path) -> str | None:
    """The first entry of `out` (a path inside it) that a sweep would not have made before its manifest, or None."""
    for entry in out.iterdir():
        if entry.name in OWN_FOLDERS and entry.is_dir() and not entry.is_symlink():
            inner = next((e for e in entry.iterdir() if not (is_temp(e) or e.name == LOCK_FILE)), None)
            if inner is not None:
                return f"{entry.name}/{inner.name}"
        elif not is_temp(entry):
            return entry.name
    return None


def prepare_out(out: Path) -> Path:
    """Creates --out (checked by `check_out`) and shows it is writable; removes temp files a killed sweep left."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test{TEMP_SUFFIX}"  # named as ours: a shard starting beside us takes it so
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to --out {str(out)!r}: {error.strerror or error}") from None
    for folder in (out, *(out / name for name in OWN_FOLDERS)):
        remove_stale_temps(folder)  # left by a sweep that was killed mid-write; only files robustcnn named
    return out


if TYPE_CHECKING:
    import pandas as pd


def sweep(models: Any, config: SweepConfig | None = None, **overrides: Any) -> pd.DataFrame:
    """Attacks each model with every attack of the suite at every eps.

    `robustcnn.sweep(["runs/mnist-adv", my_module, "nets.py:build@weights=nets.pt"], dataset="mnist5k")`:
    a model is a run directory (path or `Run`), an `nn.Module`, a spec string, or a `robustcnn.Model`
    saying more about one (name, weights, normalisation, input range, which output). Without `out` the
    results go to a temporary folder and no report is written. Raises `GateFailed` when a `fail_under`
    gate is not met (after everything is written).
    """
    import pandas as pd

    return pd.DataFrame(sweep_rows(models, config, **overrides), columns=COLUMNS)


def sweep_rows(models: Any, config: SweepConfig | None = None, **overrides: Any) -> list[dict[str, Any]]:
    """`sweep`, returning results.csv's rows (`results.COLUMNS`) as written, without pandas (the sweep command)."""
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
    subjects = load_subjects(list(models), config, suite.n, device, suite.draws)
    _check_baseline(config.baseline, subjects)
    grids = plan_grids(subjects, suite)
    check_gates_cover(gates, _gate_targets(grids, suite))
    check_out(Path(config.out))  # last of the checks: a bad model or suite is named first, whatever --out holds
    tracking = _tracking(config)  # after the read-only checks: it may make ./mlruns
    with _cluster(config):
        return _run(config, suite, subjects, grids, gates, device, tracking)


def _check_baseline(baseline: str | None, subjects) -> None:
    """--baseline names a model of this sweep: said before any attack, not when the report is written."""
    names = [subject.id for subject in subjects]
    if baseline is not None and baseline not in names:
        raise UsageError(f"--baseline {baseline!r} is not a model of this sweep; choose one of: {', '.join(names)}")


def _cluster(config: SweepConfig):
    """Connected to Ray for the sweep when --ray says so (before --out is touched: no cluster, no files)."""
    if not config.ray:
        return contextlib.nullcontext()
    from robustcnn.sweep.on_ray import ray_session

    return ray_session(config)


def _tracking(config: SweepConfig):
    """--track's tracker, built (and its library imported) before any attack runs; None without --track."""
    if config.track is None:
        return None
    from robustcnn.tracking.sweeps import SweepTracking

    return SweepTracking.connect(config.track, config.track_uri)


def _run(config: SweepConfig, suite, subjects, grids, gates, device, tracking) -> list[dict[str, Any]]:
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
        _write_report(out, config.baseline)
    if tracking is not None:  # after every file it copies; before the gates, which fail the sweep
        tracking.log(out)
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


def _write_report(out: Path, baseline: str | None) -> None:
    try:
        from robustcnn.report import report
    except ImportError:  # the report package is optional for the sweep to work
        return
    path = report(out, baseline)
    say(f"report: {path if path else out / REPORT_FILE}")
