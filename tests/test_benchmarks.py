"""The benchmark runner works on a tiny configuration and writes well-formed tables.

Never a timed test: no figure is checked, only that every section runs and its output has the right shape.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the checkout, not part of the installed package

from benchmarks import run as bench  # noqa: E402
from benchmarks.table import CSV_COLUMNS  # noqa: E402


@pytest.fixture(scope="module")
def quick_output(tiny_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    models = [str(r.path) for r in tiny_runs]
    assert bench.main([*models, "--quick", "--out", str(out)]) == 0
    return out


@pytest.mark.slow  # a minute: every section, the autoattack-grade suite included (make test-all runs it)
def test_quick_run_writes_every_section(quick_output):
    with open(quick_output / "benchmarks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == CSV_COLUMNS
    assert {row["section"] for row in rows} == set(bench.SECTIONS)
    for row in rows:
        assert row["status"] in {"PASS", "MISS", "-"}
        assert float(row["value"]) >= 0 or row["unit"] == "pp"  # a difference of accuracies may fall either way
        assert (row["status"] == "-") == (row["target"] == "")


@pytest.mark.slow
def test_markdown_has_the_evidence_header_and_the_accuracy_table(quick_output):
    text = (quick_output / "benchmarks.md").read_text()
    machine = json.loads((quick_output / "machine.json").read_text())
    for key in ("cpu", "cores", "torch", "adversarial-robustness-toolbox", "date", "load_before"):
        assert f"**{key}**" in text and key in machine
    assert "CPU-only" in text or machine["device"] != "cpu"
    with open(quick_output / "accuracy.csv", newline="") as f:
        accuracy = list(csv.DictReader(f))
    assert {"robustcnn", "art nested", "ta nested", "max gap pp"} <= set(accuracy[0])
    assert all(0 <= float(r["robustcnn"]) <= 1 for r in accuracy)


def test_bad_options_fail_before_any_work(tmp_path, capsys):
    from robustcnn.cli import run_main

    assert run_main(bench.main, ["--only", "sweep,nope", "--out", str(tmp_path)]) == 2
    assert "--only" in capsys.readouterr().err
    assert run_main(bench.main, [str(tmp_path / "missing"), "--quick", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "benchmarks.md").exists()


def test_without_the_demo_models_it_says_to_run_make_demo(tmp_path, monkeypatch, capsys):
    from robustcnn.cli import run_main

    monkeypatch.chdir(tmp_path)  # no runs/demo-std here
    assert run_main(bench.main, ["--only", "attack", "--out", str(tmp_path / "out")]) == 2
    assert "make demo" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


COUNT_SUITE = """
description = "fgsm and pgd at two radii (the counting test)"
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.1, 0.2]

[[attack]]
name = "pgd"
type = "pgd"
norm = "2"
eps = [1.0, 2.0]
steps = 3
restarts = 2
"""


def test_sweep_limit_counts_the_work_the_attacks_must_do(tiny_runs, tmp_path):
    """The limit's count of input gradients is what the sweep attacked: per eps, the survivors of the previous
    eps x steps x restarts, plus the probe's examples at every eps; nothing in the cells is left uncounted."""
    import torch

    from benchmarks.sweep_limit import Job, attack_cells, count_work

    suite = tmp_path / "count.toml"
    suite.write_text(COUNT_SUITE)
    n, probe = 40, 40  # the probe attacks min(--probe 50, n) examples afresh at every eps
    job = Job((tiny_runs[0].path,), suite, n, torch.device("cpu"), 16)
    work = count_work(job)
    results = job.sweep()
    clean = int(results[results.kind == "clean"].n_correct.iloc[0])
    rows = results[results.kind == "attack"]
    expected = 0
    for name, per_example in {"fgsm": 1, "pgd": 3 * 2}.items():
        survivors = [clean, *rows[rows.attack == name].sort_values("eps").n_correct.tolist()[:-1]]
        expected += (sum(survivors) + probe * len(survivors)) * per_example
    gradients, forwards = work.total(set(attack_cells(results).cell))
    assert gradients == expected
    assert forwards >= sum(survivors)  # at least every adversarial example is judged


def test_a_resumed_sweep_finds_every_synthesised_cell(tmp_path):
    """The scale section's resume figure is only a figure if the re-run computes nothing: its synthesised cells
    must be keyed as the sweep keys them (resume_seconds raises if the re-run wrote any cell)."""
    from benchmarks.scale import ResumePlan, resume_seconds

    plan = ResumePlan(models=2, attacks=2, eps=3)
    child, cells = resume_seconds(tmp_path, "resume", plan, n=10, seed=0)
    assert cells == plan.cells == 14
    assert child.seconds > 0 and child.peak_rss > 50 * 2**20  # a Python process with torch: the child's own peak


def test_child_peak_rss_is_the_childs_own(tmp_path):
    """The peak is the child's own, not this (torch-holding) process's, which wait4's ru_maxrss would carry over."""
    import resource

    from benchmarks.scale import run_child

    small = run_child([sys.executable, "-m", "this"], tmp_path / "small.log")
    assert small.peak_rss < 100 << 20 < resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.slow  # half a minute: eight sweep processes, two torchvision models
def test_scale_section_runs_at_smoke_sizes(tmp_path):
    assert bench.main(["--only", "scale", "--quick", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "benchmarks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["section"] for row in rows} == {"scale"}
    figures = " ".join(row["figure"] for row in rows)
    for words in ("peak RSS", "report.html size", "PGD-2 call, torchvision:resnet50", "resume of a sweep with"):
        assert words in figures
    assert all(row["status"] in {"PASS", "MISS", "-"} for row in rows)


@pytest.mark.slow  # seconds: nine one-step PGD calls on 8 images, each run twice (counted, then timed)
def test_adaptive_section_runs_at_smoke_sizes(tmp_path):
    import math

    from benchmarks.adaptive import EOTS

    assert bench.main(["--only", "adaptive", "--quick", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "benchmarks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["section"] for row in rows} == {"adaptive"}
    figures = [row["figure"] for row in rows]
    for k in EOTS:
        assert any(f"with EOT K={k} " in figure and f"plain PGD-{k}:" in figure for figure in figures)
        assert any(f"seconds per PGD step, EOT K={k} " in figure for figure in figures)
    for bpda in ('bpda = "rounding"', 'bpda = "quantise"'):
        assert any(bpda in figure for figure in figures)
    ratios = [float(row["value"]) for row in rows if row["unit"] == "x plain"]
    assert len(ratios) == len(EOTS) + 2 and all(math.isfinite(r) and r > 0 for r in ratios)
    assert all(float(row["seconds"]) > 0 for row in rows if row["unit"] != "pp")
    gaps = [row for row in rows if row["unit"] == "pp"]  # the adaptive suite against the independent attacks
    assert len(gaps) == 4 and all(math.isfinite(float(row["value"])) for row in gaps)
    assert sum(row["target"] == "<= 5" for row in gaps) == 2


def test_gpu_check_without_cuda_says_so(tmp_path, capsys, monkeypatch):
    import torch

    from benchmarks import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == gpu_check.NO_GPU
    assert not (tmp_path / "gpu-check.md").exists()


@pytest.mark.slow  # ~30 s: a training epoch and four sweep processes
def test_gpu_check_runs_on_the_cpu_at_smoke_sizes(tmp_path):
    from benchmarks import gpu_check

    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) in (0, 1)  # pgd-limit may miss
    record = json.loads((tmp_path / "gpu-check.json").read_text())
    checks = {c["name"]: c["status"] for c in record["checks"]}
    assert checks["train"] == checks["agree"] == checks["oom-backoff-numbers"] == "pass"
    assert checks["oom-backoff-recorded"] == "skipped" and checks["pgd-limit"] in ("pass", "fail")
    assert record["figures"]["agree"]["largest_share_differing"] == 0  # the CPU against itself
    assert {"torch", "cuda", "accelerator"} <= set(record["machine"])
    assert "| agree | pass |" in (tmp_path / "gpu-check.md").read_text()
