"""Ray overhead: the standard sweep as Ray tasks (2 workers x 1 thread) against one process (2 threads).

Every variant is the command a user types, timed from start to exit in a fresh process (imports and the
Ray workers' imports included), into a fresh --out (nothing cached), report off:

    python -m robustcnn.sweep demo-std demo-adv --suite S --n 1000 --no-report               # one process
    python -m robustcnn.sweep demo-std demo-adv --suite S --n 1000 --no-report --ray ADDRESS # running cluster
    python -m robustcnn.sweep demo-std demo-adv --suite S --n 1000 --no-report --ray local   # starts one

The target is on `--ray ADDRESS` of a 2-CPU cluster started before the rounds (by this process, as
`ray start --head --num-cpus 2` would), as Ray clusters are used: started once, then sweeps come and go.
`--ray local`, which also starts and stops a cluster inside the command, is shown beside it.

S is attacks/standard.toml without the patch (as in the sweep-limit section: the patch is ART's image
transforms, not what this measures). On 2 cores no speed-up is possible: the figure is what the engine
costs. Both runs' results.csv must hold the same numbers, or the figure is refused.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from benchmarks.sweep_limit import bounded_suite
from benchmarks.table import Row
from benchmarks.timing import interleaved
from robustcnn.errors import RunFailed

TARGET = "<= 1.1"


def measure(paths: list[Path], n: int, repeats: int, steps: int, seed: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        suite = bounded_suite("standard", root, steps)
        home = root / "home"  # Ray writes ~/.ray: kept out of the real home directory
        home.mkdir()
        env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        base = [sys.executable, "-m", "robustcnn.sweep", *map(str, paths), "--suite", str(suite)]
        base += ["--n", str(n), "--seed", str(seed), "--no-report"]

        with _cluster(env) as address:  # this process's own cluster: stopping it touches no other

            def run(variant: str, round_: int) -> None:
                out = root / f"{variant}-{round_}"
                where = {"one": [], "auto": ["--ray", address], "local": ["--ray", "local"]}[variant]
                _run([*base, "--out", str(out), *where], env)

            variants = {name: (lambda r, name=name: run(name, r)) for name in ("one", "auto", "local")}
            timed = interleaved(variants, repeats, torch.device("cpu"))
        for variant in ("auto", "local"):
            _require_same_numbers(root / "one-0" / "results.csv", root / f"{variant}-0" / "results.csv")
    one = timed["one"]
    what = f"{len(paths)} models x standard suite without the patch ({steps} PGD steps), n={n}"
    return [
        Row(
            "ray", f"sweep as Ray tasks on a running cluster (--ray ADDRESS, 2 workers x 1 thread) / one process "
            f"(2 threads), {what}", timed["auto"].median / one.median, "x one process", target=TARGET,
            seconds=timed["auto"].median, baseline="one process", baseline_seconds=one.median,
            spread=timed["auto"].spread, baseline_spread=one.spread, repeats=repeats,
            note="whole commands (imports, connecting, the workers' imports); results.csv numbers identical",
        ),
        Row(
            "ray", f"the same with --ray local (starts and stops a 2-CPU cluster inside the command), {what}",
            timed["local"].median / one.median, "x one process", seconds=timed["local"].median,
            baseline="one process", baseline_seconds=one.median, spread=timed["local"].spread,
            baseline_spread=one.spread, repeats=repeats, note="context: the cluster's start is paid once per sweep",
        ),
    ]  # fmt: skip


@contextlib.contextmanager
def _cluster(env: dict[str, str]) -> Iterator[str]:
    """A 2-CPU Ray cluster started by this process (as `ray start --head` would), yielding its address."""
    import ray

    saved = {key: os.environ.get(key) for key in ("HOME", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update({key: env[key] for key in saved})
    try:
        context = ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode:
        raise RunFailed(f"{' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")


def _require_same_numbers(one: Path, ray: Path) -> None:
    a, b = pd.read_csv(one).drop(columns="seconds"), pd.read_csv(ray).drop(columns="seconds")
    if not a.equals(b):
        raise RunFailed(f"{ray} differs from {one}: the Ray sweep's numbers are not the single process's")
