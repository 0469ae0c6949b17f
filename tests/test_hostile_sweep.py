"""Hostile inputs to the sweep's suite, its cells and its output folder (issue 25, part II).

Each refusal runs the command as `python -m robustcnn.sweep` does (`run_main`) and checks the contract: exit
code 2, one line on stderr naming the bad value and what is allowed, no traceback, and --out byte-for-byte
as it was (no file added, changed or deleted, not even an empty folder). What is accepted instead (a wrong
cell: reported and recomputed) is checked for its numbers.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_bad_input_matrix import FGSM_SUITE

import robustcnn
from robustcnn.cli import run_main
from robustcnn.errors import UsageError
from robustcnn.fileio import TEMP_SUFFIX, atomic_path
from robustcnn.report.load import load_sweep
from robustcnn.results import FORMULA_START, csv_text, csv_value, file_stem, gallery_file, patch_file
from robustcnn.sweep import __main__ as sweep_cli
from robustcnn.sweep import store
from robustcnn.sweep.api import check_out
from robustcnn.sweep.suite import CAPS, MAX_GRID, load_suite, suite_names

PATCH_SUITE = '[[attack]]\nname = "patch"\ntype = "patch"\nscales = [0.2]\niterations = 2\ntrain_images = 16\n'


# --- helpers -------------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, bytes | None] | None:
    """Every file (its bytes) and folder (None) under `root`; None when `root` does not exist."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()  # what came before
    code = run_main(sweep_cli.main, list(argv), name="robustcnn.sweep")
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("robustcnn.sweep: error: "), err
    for word in words:
        assert word in err, (word, err)


def write_suite(tmp_path: Path, text: str) -> str:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return str(path)


def sweep_argv(run: Path, suite: str, out: Path | str, *extra: str) -> list[str]:
    return [str(run), "--suite", suite, "--out", str(out), "--n", "20", "--no-report", *extra]


@pytest.fixture(scope="module")
def earlier(tiny_runs, tmp_path_factory) -> tuple[Path, str]:
    """A finished FGSM sweep of the standard tiny run (clean, fgsm and probe cells), and its suite file."""
    root = tmp_path_factory.mktemp("earlier")
    suite = write_suite(root, FGSM_SUITE)
    robustcnn.sweep([tiny_runs[0].path], suite=suite, n=20, out=str(root / "out"), report=False)
    return root / "out", suite


@pytest.fixture
def sweep_dir(earlier, tmp_path) -> Path:
    """A copy of the earlier sweep's folder, to resume into or to keep intact."""
    return Path(shutil.copytree(earlier[0], tmp_path / "sweep"))


# --- 9: suite values checked against the data before anything is written ------------------------------------
DATA_REFUSALS = [
    ("patch-target-not-a-class", PATCH_SUITE + "target = 12\n", ("target = 12", "mnist5k", "choose 0..9")),
    (
        "patch-smaller-than-a-pixel",
        PATCH_SUITE.replace("[0.2]", "[0.01, 0.2]"),
        ("scale 0.01", "0.28 pixels", "at least 1/28"),
    ),
]


@pytest.mark.parametrize(("text", "words"), [c[1:] for c in DATA_REFUSALS], ids=[c[0] for c in DATA_REFUSALS])
def test_a_value_the_data_cannot_take_is_refused_before_out_is_touched(
    tiny_runs, tmp_path, sweep_dir, capsys, text, words
):
    suite, fresh = write_suite(tmp_path, text), tmp_path / "fresh"
    for out in (fresh, sweep_dir):
        before = snapshot(out)
        code, err = cli(capsys, *sweep_argv(tiny_runs[0].path, suite, out))
        assert_refused(code, err, *words)
        assert snapshot(out) == before, out


def test_an_attack_that_fails_mid_sweep_marks_the_manifest_failed(tiny_runs, tmp_path, monkeypatch):
    from robustcnn.sweep import cells

    def broken(*args, **kwargs):
        raise RuntimeError("the attack broke")

    monkeypatch.setattr(cells, "bounded", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        robustcnn.sweep([tiny_runs[0].path], suite=write_suite(tmp_path, FGSM_SUITE), n=20, out=str(out), probe=0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "the attack broke" in manifest["message"]


# --- caps on what a suite may ask ----------------------------------------------------------------------------
PGD = '[[attack]]\nname = "a"\ntype = "pgd"\nnorm = "inf"\neps = [0.1]\n'
CAP_REFUSALS = [
    ("steps", PGD + "steps = 10001\n", ("attack #1 ('a')", "steps = 10001", "above the cap of 10000")),
    ("restarts", PGD + "restarts = 101\n", ("restarts = 101", "cap of 100")),
    ("queries", PGD.replace('"pgd"', '"square"') + "queries = 100001\n", ("queries = 100001", "cap of 100000")),
    (
        "samples",
        '[[attack]]\nname = "a"\ntype = "smoothing"\nnorm = "2"\neps = [0.5]\nsamples = 1000001\n',
        ("samples = 1000001", "cap of 1000000"),
    ),
    ("iterations", PATCH_SUITE.replace("iterations = 2", "iterations = 10001"), ("iterations = 10001", "10000")),
    (
        "eps-grid",
        PGD.replace("[0.1]", "[" + ", ".join(f"{i / 1000}" for i in range(1, MAX_GRID + 2)) + "]"),
        ("'eps' lists 101 values", "above the cap of 100"),
    ),
    ("attacks", "".join(PGD.replace('"a"', f'"a{i}"') for i in range(101)), ("101 [[attack]] tables", "cap of 100")),
]


@pytest.mark.parametrize(("text", "words"), [c[1:] for c in CAP_REFUSALS], ids=[c[0] for c in CAP_REFUSALS])
def test_a_suite_asking_for_days_is_refused_naming_the_field_and_its_cap(
    tiny_runs, tmp_path, sweep_dir, capsys, text, words
):
    before = snapshot(sweep_dir)
    code, err = cli(capsys, *sweep_argv(tiny_runs[0].path, write_suite(tmp_path, text), sweep_dir))
    assert_refused(code, err, *words)
    assert snapshot(sweep_dir) == before


def test_every_cap_names_a_parameter_of_an_attack_and_the_shipped_suites_fit():
    from dataclasses import fields

    from robustcnn.attacks import ATTACKS

    parameters = {f.name for name in ATTACKS.names() for f in fields(ATTACKS.get(name).Params)}
    assert set(CAPS) <= parameters, set(CAPS) - parameters
    for name in suite_names():
        load_suite(name)  # raises if a shipped suite asked for more than a cap


# --- 10: a readable but wrong cell is reported and recomputed -------------------------------------------------
def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _rows(arrays: dict, edit) -> np.ndarray:
    rows = json.loads(str(arrays["rows"]))
    return np.array(json.dumps(edit(rows)))


WRONG_CELLS = {
    "rows-not-objects-n-short": lambda a: {  # the example: rows=[1], n=3, flags for 3 examples
        "rows": np.array("[1]"),
        "n": np.array(3),
        "flags": np.packbits(np.ones((1, 3), dtype=bool), axis=1),
    },
    "n-differs-from-the-plan": lambda a: {**a, "n": np.array(int(a["n"]) + 1)},
    "flags-not-packed-bits": lambda a: {**a, "flags": np.unpackbits(a["flags"], axis=1).astype(np.int64)},
    "a-row-too-many": lambda a: {
        **a,
        "rows": _rows(a, lambda rows: rows + rows),
        "flags": np.concatenate([a["flags"], a["flags"]]),
    },
    "eps-moved": lambda a: {**a, "rows": _rows(a, lambda rows: [{**r, "eps": r["eps"] + 0.05} for r in rows])},
    "eps-a-string": lambda a: {**a, "rows": _rows(a, lambda rows: [{**r, "eps": str(r["eps"])} for r in rows])},
    "n-correct-above-n": lambda a: {**a, "rows": _rows(a, lambda rows: [{**r, "n_correct": 10**6} for r in rows])},
    "rows-an-array-of-numbers": lambda a: {**a, "rows": np.arange(3)},
    "an-extra-array": lambda a: {**a, "extra_patch": np.zeros((1, 28, 28))},
}


@pytest.mark.parametrize("edit", WRONG_CELLS.values(), ids=WRONG_CELLS.keys())
def test_a_readable_but_wrong_cell_is_reported_and_recomputed(earlier, tiny_runs, sweep_dir, capsys, edit):
    cells = sorted((sweep_dir / "cells").glob("*.npz"))
    assert len(cells) == 3  # clean, fgsm, probe
    for cell in cells:
        np.savez(cell, **edit(_arrays(cell)))
    code, err = cli(capsys, *sweep_argv(tiny_runs[0].path, earlier[1], sweep_dir))
    assert code == 0 and "Traceback" not in err, err
    for cell in cells:
        assert f"{cell} is not a readable cell (" in err, err
    again = pd.read_csv(sweep_dir / "results.csv").drop(columns="seconds")
    first = pd.read_csv(earlier[0] / "results.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(again, first)
    code, err = cli(capsys, *sweep_argv(tiny_runs[0].path, earlier[1], sweep_dir))
    assert code == 0 and "is not a readable cell" not in err  # rewritten as good cells


def test_a_cell_bigger_than_its_plan_is_not_unpacked(tmp_path):
    cells = store.CellStore(tmp_path)
    expected = store.Expected(20, "eps", (0.1,))
    cells.save("k", store.Cell([{"eps": 0.1}], np.ones((1, 20), dtype=bool), {}))
    assert cells.load("k", expected) is not None
    huge = np.zeros((1, 1 << 20), dtype=np.uint8)  # 1 MB of flags that compress to almost nothing
    np.savez_compressed(cells.path("k"), rows=np.array('[{"eps": 0.1}]'), n=np.array(20), flags=huge)
    assert cells.load("k", expected) is None


# --- 12: a folder robustcnn did not write is refused; only robustcnn's own temp files are cleaned -------------
def _age(path: Path, seconds: float = 3600) -> None:
    os.utime(path, (time.time() - seconds, time.time() - seconds))


def test_a_folder_robustcnn_did_not_write_is_refused_and_kept(tiny_runs, earlier, tmp_path, capsys):
    out = tmp_path / "theirs"
    out.mkdir()
    for name, text in {
        "results.csv": "their results\n",
        "report.html": "<p>their report</p>\n",
        "manifest.json": '{"earlier": true}\n',
        ".results.csv.abcd1234.tmp": "their temp file\n",
        "notes.tmp": "theirs too\n",
    }.items():
        (out / name).write_text(text)
        _age(out / name)
    before = snapshot(out)
    code, err = cli(capsys, *sweep_argv(tiny_runs[0].path, earlier[1], out))
    assert_refused(code, err, f"--out '{out}' holds", "no sweep's manifest.json", "pick another --out")
    assert snapshot(out) == before


def test_a_folder_with_a_manifest_of_another_format_is_refused(tiny_runs, earlier, tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "manifest.json").write_text('{"format": "someone-else/1"}\n')
    before = snapshot(out)
    code, err = cli(capsys, *sweep_argv(tiny_runs[0].path, earlier[1], out))
    assert_refused(code, err, "holds 'manifest.json'")
    assert snapshot(out) == before


def test_a_sweep_folder_resumes_and_only_robustcnn_temp_files_are_removed(tiny_runs, earlier, sweep_dir, capsys):
    theirs = [sweep_dir / ".results.csv.abcd1234.tmp", sweep_dir / "notes.tmp", sweep_dir / "cells" / ".x.tmp"]
    ours = [sweep_dir / f".results.csv.abcd1234{TEMP_SUFFIX}", sweep_dir / "cells" / f".k.npz.zz{TEMP_SUFFIX}"]
    for path in theirs + ours:
        path.write_text("x")
        _age(path)
    fresh = sweep_dir / f".manifest.json.new{TEMP_SUFFIX}"  # a writer beside us, still at work
    fresh.write_text("x")
    code, err = cli(capsys, *sweep_argv(tiny_runs[0].path, earlier[1], sweep_dir))
    assert code == 0, err
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours) and fresh.exists()


def test_atomic_writes_name_their_temp_files_for_robustcnn(tmp_path):
    with atomic_path(tmp_path / "results.csv") as tmp:
        assert tmp.name.startswith(".results.csv.") and tmp.name.endswith(TEMP_SUFFIX)
        tmp.write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_what_a_sweep_leaves_before_its_manifest_is_taken_as_its_own(tmp_path):
    out = tmp_path / "killed-early"
    (out / "cells").mkdir(parents=True)
    (out / "gallery").mkdir()
    (out / "cells" / ".lock").touch()
    (out / f".manifest.json.abc{TEMP_SUFFIX}").touch()
    check_out(out)  # accepted: empty own folders, a lock, a temp file of ours
    (out / "gallery" / "x.npz").touch()
    with pytest.raises(UsageError, match="holds 'gallery/x.npz'"):
        check_out(out)


# --- the lock file is never followed through a link -----------------------------------------------------------
def test_a_symlinked_lock_file_is_refused_and_never_created(tiny_runs, earlier, sweep_dir, tmp_path, capsys):
    target = tmp_path / "elsewhere" / "victim"
    target.parent.mkdir()
    lock = sweep_dir / "cells" / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(target)
    before = snapshot(sweep_dir)
    code, err = cli(capsys, *sweep_argv(tiny_runs[0].path, earlier[1], sweep_dir))
    assert_refused(code, err, f"{lock} is a symbolic link", "delete it")
    assert snapshot(sweep_dir) == before and not target.exists()


def test_a_lock_link_planted_after_the_check_is_not_followed(tmp_path, monkeypatch):
    cells = store.CellStore(tmp_path)
    target = tmp_path / "victim"
    (cells.folder / store.LOCK_FILE).symlink_to(target)
    monkeypatch.setattr(store, "check_lock_file", lambda path: None)  # as if the link came after the check
    with pytest.raises(UsageError, match="a symbolic link"), cells.lock():
        pass
    assert not target.exists()


# --- 13: an empty --out --------------------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["", "  "], ids=["empty", "blank"])
def test_an_empty_out_is_refused_and_the_current_directory_kept(tiny_runs, earlier, tmp_path, capsys, monkeypatch, out):
    here = tmp_path / "here"
    here.mkdir()
    (here / "results.csv").write_text("mine\n")
    monkeypatch.chdir(here)
    before = snapshot(here)
    code, err = cli(capsys, *sweep_argv(tiny_runs[0].path, earlier[1], out))
    assert_refused(code, err, f"--out {out!r} is not allowed", "give a folder")
    assert snapshot(here) == before


# --- 14: one file per id --------------------------------------------------------------------------------------
TRICKY_IDS = [
    "std", "a/b", "a_b", "a b", "A_b", "Std", "STD", "..", ".", "", "-", "_", "a__b", "a", "b__c", "c", "b",
    "x" * 300, "x" * 301, "é", "e", "a_b-" + file_stem("a/b").rsplit("-", 1)[1], "../escape", "<img src=x>",
    "con", "a.", "a-", "a_",
]  # fmt: skip


def test_file_stems_are_unique_safe_and_short():
    stems = [file_stem(i) for i in TRICKY_IDS]
    assert len({s.lower() for s in stems}) == len(TRICKY_IDS)  # unique, also on a disk that ignores case
    assert all(0 < len(s) <= 64 and s[0].isalnum() and s.isascii() and "/" not in s for s in stems), stems
    assert file_stem("std") == "std" and file_stem("pgd-linf") == "pgd-linf"  # plain ids keep their names
    patches = {patch_file(m, a).lower() for m in TRICKY_IDS for a in TRICKY_IDS}
    assert len(patches) == len(TRICKY_IDS) ** 2
    assert len({gallery_file(m) for m in TRICKY_IDS}) == len(TRICKY_IDS)


def test_two_ids_that_share_a_file_name_today_get_one_file_each(tiny_runs, tmp_path, capsys):
    """a/b and a_b (gallery), and a__b with attack c next to a with attack b__c (patches)."""
    suite = write_suite(tmp_path, PATCH_SUITE.replace('"patch"\ntype', '"c"\ntype') + PATCH_SUITE.replace(
        '"patch"\ntype', '"b__c"\ntype') + FGSM_SUITE)  # fmt: skip
    models = [f"{tiny_runs[0].path}@name=a/b", f"{tiny_runs[1].path}@name=a_b"]
    models += [f"{tiny_runs[0].path}@name=a__b", f"{tiny_runs[1].path}@name=a"]
    out = tmp_path / "out"
    code, err = cli(capsys, *models, "--suite", suite, "--out", str(out), "--n", "20", "--probe", "0")
    assert code == 0, err
    ids = ["a/b", "a_b", "a__b", "a"]
    rows = pd.read_csv(out / "results.csv")
    assert len(rows[rows.attack.isin(["c", "b__c"])]) == 8  # the same patch under two names: rows for each
    galleries = {m: out / gallery_file(m) for m in ids}
    assert sorted(p.name for p in (out / "gallery").iterdir()) == sorted(p.name for p in galleries.values())
    patches = {(m, a): out / patch_file(m, a) for m in ids for a in ("c", "b__c")}
    assert sorted(p.name for p in (out / "patches").iterdir()) == sorted(p.name for p in patches.values())
    runs = {"a/b": tiny_runs[0], "a_b": tiny_runs[1], "a__b": tiny_runs[0], "a": tiny_runs[1]}
    for model, path in galleries.items():  # each gallery shows its own model's predictions
        with np.load(path, allow_pickle=False) as gallery, torch.no_grad():
            x_adv = torch.from_numpy(gallery["x_adv"])
            assert (runs[model].model()(x_adv).argmax(1).numpy() == gallery["pred_adv"]).all(), model
    assert "Gallery not in this sweep" not in (out / "report.html").read_text()


# --- CSV cells a spreadsheet would run -----------------------------------------------------------------------
FORMULA_IDS = ['=HYPERLINK("http://x")', "-0.5"]


def test_formula_like_text_is_quoted_in_results_csv_and_read_back_as_written(tiny_runs, earlier, tmp_path, capsys):
    out = tmp_path / "out"
    models = [f"{tiny_runs[0].path}@name={FORMULA_IDS[0]}", f"{tiny_runs[1].path}@name={FORMULA_IDS[1]}"]
    code, err = cli(capsys, *models, "--suite", earlier[1], "--out", str(out), "--n", "20")
    assert code == 0, err
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {row["model"] for row in rows} == {"'" + i for i in FORMULA_IDS}
    for row in rows:
        assert not any(value.startswith(FORMULA_START) for value in row.values()), row
        float(row["accuracy"])  # numbers stay numbers
    data = load_sweep(out)  # what the report reads
    assert list(data.results.model.unique()) == FORMULA_IDS and data.results.accuracy.between(0, 1).all()
    html = (out / "report.html").read_text()
    assert "=HYPERLINK(&#34;http://x&#34;)" in html or "=HYPERLINK(&quot;http://x&quot;)" in html
    assert not any(f"{quote}=HYPERLINK" in html for quote in ("'", "&#39;", "&#x27;"))  # the prefix stays in the file


@pytest.mark.parametrize(
    "value", ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'=x", "''@x", "'x", "x=1", "", "plain", "-", "'"]
)
def test_csv_text_round_trips_and_never_starts_a_formula(value):
    written = csv_text(value)
    assert csv_value(written) == value
    assert not written.startswith(FORMULA_START)
    assert written == value or written == "'" + value
