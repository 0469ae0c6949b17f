"""The export of a finished sweep: per-example tables that agree with results.csv, image-folder file names, and
RobustBench's model-info JSON with the headline's numbers, labelled AutoAttack-grade only when that suite ran."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_image_folder
from test_layering import HEAVY, PACKAGE, imports, under
from torch import nn

import robustcnn
from robustcnn.cli import run_main
from robustcnn.errors import EXIT_USAGE
from robustcnn.export import __main__ as export_cli
from robustcnn.results import csv_value

FGSM = """
description = "one Linf attack"
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.05, 0.1]
"""
SUITE = (
    FGSM.replace("one Linf attack", "two norms")
    + """
[[attack]]
name = "pgd-l2"
type = "pgd"
norm = "2"
eps = [0.5, 1.0]
steps = 3
"""
)
GROUP = ["model", "kind", "attack", "eps"]
READERS = [*sorted((PACKAGE / "export").glob("*.py")), PACKAGE / "outcomes.py", PACKAGE / "cell_file.py"]


def centroid_net() -> nn.Module:
    """A nearest-class-mean classifier of digits (about 90% clean accuracy) without training: weights in closed form."""
    train = robustcnn.load_dataset("digits", "train")
    x, y = train.images().flatten(1), train.y  # (N, 64) in [0, 1]
    means = torch.stack([x[y == k].mean(0) for k in range(10)])  # (10, 64)
    linear = nn.Linear(64, 10)
    with torch.no_grad():
        linear.weight.copy_(means)
        linear.bias.copy_(-0.5 * (means**2).sum(1))  # argmax of -|x - mean|^2 / 2
    return nn.Sequential(nn.Flatten(), linear).eval()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two models on 40 digits, Linf and L2 attacks; one model id a spreadsheet would run as a formula."""
    root = tmp_path_factory.mktemp("export")
    (root / "suite.toml").write_text(SUITE)
    torch.manual_seed(0)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()  # random weights: about chance
    models = [robustcnn.Model(centroid_net(), name="centroid"), robustcnn.Model(flat, name="=flat")]
    robustcnn.sweep(models, dataset="digits", suite=str(root / "suite.toml"), n=40, out=str(root / "out"), report=False)
    return root / "out"


def results_of(out) -> pd.DataFrame:
    results = pd.read_csv(out / "results.csv", keep_default_na=False, dtype={"model": str})
    results["model"] = results["model"].map(csv_value)
    return results[results["kind"] != "probe"].reset_index(drop=True)


def read_csv_export(path) -> pd.DataFrame:
    table = pd.read_csv(path, keep_default_na=False, dtype=str)
    for column in table.columns:
        table[column] = table[column].map(csv_value)
    return table.astype({"eps": float, "index": np.int64, "label": np.int64}).assign(correct=table["correct"] == "True")


def test_per_example_rows_add_up_to_results_csv(sweep):
    written = robustcnn.export(sweep, per_example=True)
    assert written.paths == (sweep / "per_example.csv",)
    table = read_csv_export(written.paths[0])
    results = results_of(sweep)
    assert "file" not in table.columns  # digits come from an array, not files
    assert written.rows == len(table) == int(results["n"].sum())
    counted = table.groupby(GROUP, sort=False).agg(n=("correct", "size"), n_correct=("correct", "sum")).reset_index()
    assert counted[GROUP].values.tolist() == results[GROUP].values.tolist()  # results.csv's order, probes left out
    assert counted["n_correct"].tolist() == results["n_correct"].tolist()
    assert counted["n"].tolist() == results["n"].tolist()
    manifest = json.loads((sweep / "manifest.json").read_text())
    for entry in manifest["models"]:
        rows = table[table["model"] == entry["id"]]
        index = rows["index"].to_numpy()[: entry["n"]]
        assert hashlib.sha256(index.astype(np.int64).tobytes()).hexdigest()[:16] == entry["subset"]
        assert (rows.groupby(["attack", "eps"])["index"].apply(list).map(list(index).__eq__)).all()  # same order


def test_parquet_holds_the_same_table(sweep, tmp_path):
    pytest.importorskip("pyarrow")
    written = robustcnn.export(sweep, per_example=True, to=tmp_path / "all.parquet")  # the suffix chooses parquet
    assert written.format == "parquet" and written.paths == (tmp_path / "all.parquet",)
    parquet = pd.read_parquet(written.paths[0])
    csv = read_csv_export(robustcnn.export(sweep, fmt="csv", to=tmp_path / "all.csv").paths[0])
    assert parquet["correct"].dtype == bool and parquet["index"].dtype == np.int64
    assert parquet["model"].tolist() == csv["model"].tolist() and "=flat" in set(parquet["model"])
    assert (parquet["correct"].to_numpy() == csv["correct"].to_numpy()).all()
    assert np.allclose(parquet["eps"], csv["eps"]) and (parquet["index"] == csv["index"]).all()


def test_parquet_without_pyarrow_names_the_extra(sweep, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    argv = [str(sweep), "--per-example", "--format", "parquet"]
    assert run_main(export_cli.main, argv, name="robustcnn.export") == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "robustcnn[parquet]" in err
    assert not (sweep / "per_example.parquet").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        ([], "say what to export"),
        (["--per-example", "--format", "robustbench"], "drop --per-example"),
        (["--format", "xlsx"], "choose one of: csv, parquet, robustbench"),
        (["--per-example", "--to", "{out}/results.csv"], "would replace the sweep's own results.csv"),
        (["--per-example", "--to", "{out}/table.parquet", "--format", "csv"], "does not end in .csv"),
    ],
)
def test_unclear_requests_are_one_line(sweep, capsys, argv, words):
    before = (sweep / "results.csv").read_bytes()
    argv = [a.replace("{out}", str(sweep)) for a in argv]
    assert run_main(export_cli.main, [str(sweep), *argv], name="robustcnn.export") == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert (sweep / "results.csv").read_bytes() == before


@pytest.mark.parametrize("removed, words", [("cells", "cells/ folder (re-run the sweep)"), ("examples", "re-run it")])
def test_a_sweep_without_per_example_files_says_re_run(sweep, tmp_path, capsys, removed, words):
    copy = tmp_path / "old"
    shutil.copytree(sweep, copy)
    shutil.rmtree(copy / removed)
    (copy / "per_example.csv").unlink(missing_ok=True)
    assert run_main(export_cli.main, [str(copy), "--per-example"], name="robustcnn.export") == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not (copy / "per_example.csv").exists()  # nothing half-written


def test_robustbench_holds_the_headline_numbers(sweep):
    written = robustcnn.export(sweep, fmt="robustbench")
    results = results_of(sweep)
    manifest = json.loads((sweep / "manifest.json").read_text())
    threats = {"worst-case": "Linf", "worst-case-l2": "L2"}
    stems = {"centroid": "centroid", "=flat": "flat-"}
    assert len(written.paths) == 4  # two models x two threat models
    for entry in manifest["models"]:
        mine = results[results["model"] == entry["id"]]
        clean = mine[mine["kind"] == "clean"].iloc[0]
        for name, threat in threats.items():
            (path,) = [p for p in written.paths if p.parent.name == threat and p.name.startswith(stems[entry["id"]])]
            info = json.loads(path.read_text())
            eps = entry["headline_eps"][name]
            worst = mine[(mine["attack"] == name) & np.isclose(mine["eps"], eps)].iloc[0]
            assert info["clean_acc"] == f"{clean['accuracy'] * 100:.2f}"
            assert info["robustcnn"]["worst_case_acc"] == f"{worst['accuracy'] * 100:.2f}"
            assert info["robustcnn"]["n"] == worst["n"] == 40 and info["robustcnn"]["eps"] == eps
            assert info["dataset"] == "digits" and info["eps"] == f"{eps:g}"
            assert info["autoattack_acc"] is None and "not an AutoAttack-grade evaluation" in info["footnote"]
            assert info["link"] is None and info["number_forward_passes"] == 1


def test_autoattack_acc_only_where_the_shipped_autoattack_grade_suite_ran(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()  # about chance: the cascade ends at once
    out = tmp_path / "aa"
    robustcnn.sweep(
        [robustcnn.Model(net, name="net")], dataset="digits", suite="autoattack-grade", n=8, out=str(out), report=False
    )
    info = json.loads((robustcnn.export(out, fmt="robustbench").paths[0]).read_text())
    assert info["robustcnn"]["autoattack_grade"] and info["robustcnn"]["threat_model"] == "Linf"
    assert info["robustcnn"]["worst_case_attacks"] == ["apgd-ce", "apgd-t", "square"]
    assert info["autoattack_acc"] == info["robustcnn"]["worst_case_acc"]
    assert "not the official AutoAttack" in info["footnote"]

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["suite"]["text"] = manifest["suite"]["text"].replace("steps = 100", "steps = 5")  # a copy, cut short
    (out / "manifest.json").write_text(json.dumps(manifest))
    info = json.loads((robustcnn.export(out, fmt="robustbench").paths[0]).read_text())
    assert info["autoattack_acc"] is None and not info["robustcnn"]["autoattack_grade"]
    assert "suite 'autoattack-grade'" in info["footnote"] and "not an AutoAttack-grade evaluation" in info["footnote"]


def test_an_image_folder_exports_its_file_names(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=6)
    (tmp_path / "suite.toml").write_text(FGSM)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 10 * 12, 2)).eval()
    out = tmp_path / "out"
    dataset = f"imagefolder:{root}"
    robustcnn.sweep([robustcnn.Model(net, name="net")], dataset=dataset, suite=str(tmp_path / "suite.toml"), n=8,
                    out=str(out), report=False)  # fmt: skip
    table = read_csv_export(robustcnn.export(out, per_example=True).paths[0])
    listing = [p.relative_to(root / "test").as_posix() for p in sorted((root / "test").rglob("*.png"))]
    assert len(table) == 8 * 5  # clean, fgsm at two eps, worst-case at two
    assert table["file"].tolist() == [listing[i] for i in table["index"]]  # the test folder's sorted files
    assert table["label"].tolist() == [int(name.startswith("dog/")) for name in table["file"]]


@pytest.mark.parametrize("path", READERS, ids=lambda p: p.name)
def test_the_export_imports_no_torch(path):
    """It reads results as the report does, so it runs where the sweep's machinery is not installed."""
    heavy = sorted(name for name in imports(path.read_text(encoding="utf-8"), path) if under(name, HEAVY))
    assert not heavy, f"{path.name} imports {heavy}"
