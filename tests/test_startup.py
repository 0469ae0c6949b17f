"""The sweep command's start-up: what it leaves out (pandas, the report's modules, scipy) must change no output.

results.csv is written without pandas, the terminal table is made from the rows in memory, mnist5k's CSV is decoded
once into the data folder, and ART's modules get scipy's names only when they are called. Each test compares with
the way it was done before (pandas' to_csv, the report's table read back from disk, the CSV parsed, scipy's own).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from report_fixtures import make_manifest, make_results
from test_sweep import PGD_SUITE

import robustcnn.report
from robustcnn.report.load import as_manifest
from robustcnn.report.tables import headline_rows
from robustcnn.results import COLUMNS, csv_text, results_csv

TRICKY_NUMBERS = [0.1, 0.1 + 0.2, 1e-05, 0.0001, 1e16, 123456789.123, -0.0, 2.5e-300, 1 / 3, math.nan]
TRICKY_TEXT = ["plain", "a,b", 'say "hi"', "two\nlines", "=1+2", "-x", "'=already", "", "ünïcode", "\ttab"]


def _pandas_csv(rows: list[dict]) -> str:
    """results.csv as the sweep wrote it with pandas (text cells through csv_text, numbers left to to_csv)."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in frame.columns:
        if frame[column].dtype.kind not in "biuf":
            frame[column] = frame[column].map(lambda v: csv_text(v) if isinstance(v, str) else v)
    return frame.to_csv(index=False)


def _rows(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    templates = make_results(models=["m"], attacks=["pgd"]).to_dict("records")
    rows = []
    for i in range(count):
        row = dict(templates[i % 5])
        row.update(
            model=TRICKY_TEXT[rng.integers(len(TRICKY_TEXT))],
            params=json.dumps({"note": TRICKY_TEXT[rng.integers(len(TRICKY_TEXT))]}),
            eps=TRICKY_NUMBERS[rng.integers(len(TRICKY_NUMBERS))],
            scale=math.nan,
            seconds=float(rng.random() * 100),
            accuracy=float(rng.random()),
            n=int(rng.integers(0, 10_000)),
            seed=int(rng.integers(0, 2**31)),
            preprocessing="in-model",
        )
        rows.append({column: row[column] for column in COLUMNS})
    return rows


@pytest.mark.parametrize("seed", range(3))
def test_results_csv_is_what_pandas_wrote(seed):
    rows = _rows(40, seed)
    assert results_csv(rows) == _pandas_csv(rows)


def test_results_csv_of_a_real_table_with_patches_and_empty_numbers_is_what_pandas_wrote():
    frame = make_results(attacks=["fgsm", "pgd", "patch"])
    frame["preprocessing"] = "in-model"
    rows = [{column: row[column] for column in COLUMNS} for row in frame.to_dict("records")]
    assert any(math.isnan(row["eps"]) for row in rows) and any(math.isnan(row["target_success"]) for row in rows)
    assert results_csv(rows) == _pandas_csv(rows)


def test_the_table_from_rows_in_memory_is_the_reports_table_patches_and_rewritten_rows_included():
    frame = make_results(attacks=["fgsm", "pgd", "patch"])
    rows = frame.to_dict("records")
    assert rows[0]["model"] == "std" and rows[0]["kind"] == "clean"
    rows.append(dict(rows[0], accuracy=0.123, n_correct=61, ci_low=0.1, ci_high=0.15))  # a re-run cell, later
    manifest = make_manifest(["std", "adv"])
    from_rows = robustcnn.report.summary_of_rows(rows, as_manifest(manifest))
    assert from_rows == robustcnn.report.summary_table(pd.DataFrame(rows), manifest)
    assert " 12.3 " in from_rows.splitlines()[2]  # std's clean cell: the later row
    assert [r["is_patch"] for r in headline_rows(rows)].count(True) == (frame["attack_type"] == "patch").sum() > 0


SHOW_MODULES = """
import atexit, runpy, sys
atexit.register(lambda: print("MODULES", *sorted(m for m in ("pandas", "jinja2", "scipy.special", "scipy.stats",
    "sklearn", "mlxtend.data", "robustcnn.report.load") if m in sys.modules), file=sys.stderr))
sys.argv = ["robustcnn.sweep", *sys.argv[1:]]
runpy.run_module("robustcnn.sweep", run_name="__main__", alter_sys=True)
"""


def test_the_sweep_command_prints_the_reports_table_without_importing_what_it_does_not_use(tiny_runs, tmp_path):
    suite, out = tmp_path / "suite.toml", tmp_path / "out"
    suite.write_text(PGD_SUITE)
    args = [*(str(r.path) for r in tiny_runs), "--suite", str(suite), "--n", "40", "--out", str(out), "--no-report"]
    done = subprocess.run(
        [sys.executable, "-c", SHOW_MODULES, *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    loaded = next(line for line in done.stderr.splitlines() if line.startswith("MODULES")).split()[1:]
    assert loaded == [], f"the sweep command imported {loaded}"
    assert done.stdout.strip().endswith(robustcnn.report.summary_table(out))


def test_mnist5k_is_decoded_once_into_the_data_folder_and_a_broken_copy_is_decoded_again(tmp_path):
    from robustcnn.data.offline import _mnist5k_arrays

    parsed = _mnist5k_arrays()  # no folder: the CSV itself
    _mnist5k_arrays.cache_clear()
    first = _mnist5k_arrays(tmp_path)
    (copy,) = (tmp_path / "mnist5k").glob("*.npy")
    _mnist5k_arrays.cache_clear()
    again = _mnist5k_arrays(tmp_path)
    copy.write_bytes(copy.read_bytes()[:1000])  # cut short, as by a full disk
    _mnist5k_arrays.cache_clear()
    repaired = _mnist5k_arrays(tmp_path)
    for x, y in (first, again, repaired):
        assert x.dtype == np.uint8 and y.dtype == np.int64
        assert np.array_equal(x, parsed[0]) and np.array_equal(y, parsed[1])
    assert np.load(copy).shape == (5000, 785)  # written whole again
    _mnist5k_arrays.cache_clear()


def test_mnist5k_reads_without_a_writable_data_folder(tmp_path):
    from robustcnn.data.offline import _mnist5k_arrays

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    _mnist5k_arrays.cache_clear()
    x, y = _mnist5k_arrays(blocked)
    assert x.shape == (5000, 784) and np.bincount(y).tolist() == [500] * 10
    _mnist5k_arrays.cache_clear()


DEFERRED_SCIPY = """
import sys
from robustcnn.art_setup import import_art
import_art()
from art.utils import random_sphere
from art.attacks.evasion import ProjectedGradientDescentNumpy  # its module only (art_setup.LazyPackage)
assert "scipy.special" not in sys.modules and "scipy.stats" not in sys.modules, "imported at load"
import numpy as np
np.random.seed(0)
points = random_sphere(5, 7, 1.5, 2)  # L2 starts: gammainc, imported now
import scipy.special
assert sys.modules["scipy.special"] is scipy.special and hasattr(scipy.special, "erf"), "the real module after"
np.random.seed(0)
a = np.random.randn(5, 7)
s = np.sum(a**2, axis=1)
expected = a * np.tile(scipy.special.gammainc(3.5, s / 2.0) ** (1 / 7) * 1.5 / np.sqrt(s), (7, 1)).T  # ART's formula
assert np.array_equal(points, expected), "not scipy's values"
print("ok")
"""


def test_arts_scipy_names_load_when_called_and_give_scipys_values():
    """art.utils (random L2 starts) and ART's PGD base (random eps) load without scipy.special and scipy.stats (~0.3
    and ~0.7 s of start-up); the first call imports the real function."""
    done = subprocess.run([sys.executable, "-c", DEFERRED_SCIPY], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
