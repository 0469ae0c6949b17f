"""The report end to end without a browser: files written, sections present, bad input refused with exit 2,
user text escaped, no torch imported, and the pieces (tables, eps formatting, SVG) on their own."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_fixtures import make_results, make_sweep_dir, write_gallery

import robustcnn.report
from robustcnn.cli import run_main
from robustcnn.errors import EXIT_USAGE, UsageError
from robustcnn.report.__main__ import main
from robustcnn.report.entries import reference_eps
from robustcnn.report.format import format_eps, markdown_escape
from robustcnn.report.load import normalize_results
from robustcnn.report.plots import nice_ticks
from robustcnn.report.tables import headline
from robustcnn.results import COLUMNS, Manifest, ModelEntry, file_stem

ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    out = make_sweep_dir(
        tmp_path_factory.mktemp("report") / "sweep", attacks=("fgsm", "pgd", "pgd-50", "square", "patch")
    )
    robustcnn.report(out)
    return out


def svgs(html: str) -> list[str]:
    return re.findall(r"<svg class=\"plot\".*?</svg>", html, flags=re.S)


def test_report_writes_html_summary_and_checks(sweep):
    html = (sweep / "report.html").read_text(encoding="utf-8")
    for section in ("headline", "checks", "curves", "worst", "patch", "gallery", "training", "reproducibility"):
        assert f'<section id="{section}">' in html
    assert len(svgs(html)) == 4 + 1 + 1 + 1  # one per eps attack, worst case, patch, training
    assert len(re.findall(r"data:image/(?:webp|png);base64,", html)) == 2 + 2  # a contact sheet per model, 2 patches
    assert html.count('<span class="caption">') == 2 * 6  # one caption per gallery example
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    checks = json.loads((sweep / "checks.json").read_text())
    assert checks["format"] == "robustcnn-checks/1" and checks["counts"]["fail"] == 0
    assert {"name", "status", "message", "link", "model"} == set(checks["checks"][0])
    summary = (sweep / "summary.md").read_text()
    assert "| model | clean | fgsm (eps 0.3) |" in summary and "| adv | 98.0% \\[96.4, 98.9\\]" in summary


def test_svg_figures_are_well_formed(sweep):
    for svg in svgs((sweep / "report.html").read_text(encoding="utf-8")):
        root = ET.fromstring(svg)
        assert root.findall(".//polyline")


def test_report_is_reproducible(sweep):
    before = (sweep / "report.html").read_bytes()
    robustcnn.report(sweep)
    assert (sweep / "report.html").read_bytes() == before


def test_package_is_callable_and_the_function_is_public(sweep):
    assert robustcnn.report(sweep) == robustcnn.report.report(sweep) == sweep / "report.html"


def test_summary_table_from_directory_and_dataframe(sweep):
    text = robustcnn.report.summary_table(sweep)
    assert text.splitlines()[0].split() == [
        "model",
        "clean",
        "fgsm@0.3",
        "pgd@0.3",
        "pgd-50@0.3",
        "square@0.3",
        "worst-case@0.3",
    ]
    assert text.splitlines()[2].startswith("std ") and "98.0" in text
    frame = pd.read_csv(sweep / "results.csv")
    assert "*" in robustcnn.report.summary_table(frame)  # no manifest: reference eps guessed, and said so
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert robustcnn.report.summary_table(frame, manifest) == text


def test_cli_prints_path_table_and_checks(sweep, capsys):
    assert run_main(main, [str(sweep), "--verbose"], name="robustcnn.report") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(sweep / "report.html")
    assert "worst-case@0.3" in out and "PASS  robust-le-clean [adv]" in out
    assert re.search(r"checks: \d+ pass, 0 warn, 0 fail, \d+ skip", out)


def test_cli_in_a_subprocess_imports_no_torch(sweep):
    code = (
        "import sys; from robustcnn.report.__main__ import main; assert main(sys.argv[1:]) == 0; "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def test_failing_checks_are_shown_not_hidden(tmp_path, capsys):
    def broken(frame):
        frame = frame.copy()
        row = (frame["model"] == "adv") & (frame["attack"] == "pgd") & (frame["eps"] == 0.3)
        frame.loc[row, ["n_correct", "accuracy", "ci_low", "ci_high"]] = [495, 0.99, 0.977, 0.996]
        return frame

    out = make_sweep_dir(tmp_path / "s", results=broken)
    assert run_main(main, [str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FAIL  monotone-eps [adv]: pgd:" in printed and "FAIL  robust-le-clean" not in printed
    html = (out / "report.html").read_text()
    assert '<span class="badge fail">fail</span>' in html and "99.0%" in html  # the number is still there
    assert "**FAIL** monotone-eps (adv)" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    ("breakage", "words"),
    [
        (lambda d: (d / "results.csv").unlink(), "results.csv does not exist"),
        (
            lambda d: (d / "results.csv").write_text("model,attack\nx,y\n"),
            "lacks the column(s) kind, eps, n, n_correct",
        ),
        (lambda d: (d / "results.csv").write_bytes(b"\xff\xfe\x00garbage\x00\xff"), "is not a readable CSV table"),
        (lambda d: (d / "results.csv").write_text(""), "is not a readable CSV table"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is not valid JSON"),
        (lambda d: (d / "manifest.json").write_text("[1, 2]"), "must hold a JSON object, not list"),
        (lambda d: (d / "manifest.json").write_text('{"models": 3}'), "'models' must be a list of objects"),
        (lambda d: _edit_csv(d, "accuracy", "lots"), "row 2: accuracy 'lots' is not a number"),
        (lambda d: _edit_csv(d, "kind", "mystery"), "row 2: kind 'mystery' is not one of clean, attack, worst-case"),
        (lambda d: _edit_csv(d, "eps", ""), "row 2: eps is empty on a clean row"),
    ],
)
def test_bad_input_exits_2_and_keeps_the_old_report(tmp_path, capsys, breakage, words):
    out = make_sweep_dir(tmp_path / "s", gallery=False)
    robustcnn.report(out)
    before = {name: (out / name).read_bytes() for name in ("report.html", "summary.md", "checks.json")}
    breakage(out)
    assert run_main(main, [str(out)], name="robustcnn.report") == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("robustcnn.report: error: ") and words in err and err.count("\n") == 1
    assert {name: (out / name).read_bytes() for name in before} == before


def _edit_csv(out: Path, column: str, value: str) -> None:
    frame = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    frame.loc[0, column] = value
    frame.to_csv(out / "results.csv", index=False)


def test_missing_directory_is_a_usage_error(tmp_path, capsys):
    assert run_main(main, [str(tmp_path / "nope")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(UsageError, match="does not exist"):
        robustcnn.report(tmp_path / "nope")


def test_cli_subprocess_exit_code_on_bad_input(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "robustcnn.report", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert (
        done.returncode == EXIT_USAGE and "results.csv does not exist" in done.stderr and "Traceback" not in done.stderr
    )


def test_optional_parts_missing_say_so(tmp_path):
    out = make_sweep_dir(
        tmp_path / "s", attacks=("fgsm", "pgd"), training=False, gallery=False, patch_images=False, write_manifest=False
    )
    html = (robustcnn.report(out)).read_text()
    assert "No manifest.json in the sweep directory" in html
    assert html.count("Gallery not in this sweep.") == 2
    assert "Not in this sweep (no training metrics in the manifest)." in html
    assert re.search(r'<section id="patch">\s*<h2>Adversarial patch</h2>\s*<p class="muted">Not in this sweep', html)


def test_reader_tolerates_extra_and_missing_optional_columns_and_empty_cells(tmp_path):
    def older_and_newer(frame):
        frame = frame.drop(columns=["cell", "seconds", "ci_low", "ci_high", "box", "checkpoint_sha256"])
        frame["future_column"] = "x"
        frame.loc[frame["kind"] == "clean", "attack_type"] = ""
        return frame

    out = make_sweep_dir(tmp_path / "s", results=older_and_newer)
    robustcnn.report(out)
    html = (out / "report.html").read_text()
    assert "[96.4, 98.9]" in html  # intervals recomputed from n_correct and n


def test_unreadable_gallery_and_patch_are_explained(tmp_path):
    out = make_sweep_dir(tmp_path / "s", attacks=("pgd", "patch"))
    (out / "gallery" / "std.npz").write_bytes(b"not a zip")
    np.savez(out / "gallery" / "adv.npz", x=np.array([object()], dtype=object))  # would need pickle
    (out / "patches" / "std__patch.png").write_bytes(b"not a png")
    html = robustcnn.report(out).read_text()
    assert "Gallery std.npz is unreadable" in html and "Gallery adv.npz is unreadable" in html
    assert "no patch image" in html


def test_user_text_is_escaped_everywhere(tmp_path):
    models = (EVIL, "plain")
    out = make_sweep_dir(
        tmp_path / "s",
        models=models,
        attacks=("fgsm", "pgd", "patch"),
        suite=EVIL,
        class_names=[f"<b>{i}</b>&amp;" for i in range(10)],
        manifest={"command": f"python -m robustcnn.sweep '{EVIL}'"},
    )
    html = robustcnn.report(out).read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>1</b>" not in html and "&lt;b&gt;1&lt;/b&gt;&amp;amp;" in html
    summary = (out / "summary.md").read_text()
    assert "<script>" not in summary and r"\<script\>alert(1)\</script\>" in summary


def test_odd_manifest_values_do_not_crash(tmp_path):
    odd = {"suite": "just a name", "command": ["python", "-m", "robustcnn.sweep", "a b"], "versions": ["x"]}
    out = make_sweep_dir(tmp_path / "s", manifest=odd, attacks=("pgd",))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["models"][0].update(threat_model="Linf 0.3", class_names="0123", training_metrics=[1, 2])
    manifest["models"][1]["training_metrics"][2] = {"epoch": "three", "val_pgd_acc": None}
    (out / "manifest.json").write_text(json.dumps(manifest))
    np.savez(
        out / "gallery" / "std.npz",
        x=np.zeros((2, 4, 5, 5)),
        x_adv=np.zeros((2, 4, 5, 5)),
        y=[0, 1],
        pred=[0, 1],
        pred_adv=[1, 0],
    )
    html = robustcnn.report(out).read_text()
    assert "Robustness report: just a name" in html and "python -m robustcnn.sweep &#39;a b&#39;" in html
    assert "std.npz has unexpected shapes" in html


def test_benchmark_runs(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("report_speed", ROOT / "benchmarks" / "report_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "MODELS", module.MODELS[:2])
    result = module.measure(repeats=1)
    assert result["rows"] == 2 * (1 + 5 * 10 + 4 + 10) and result["report_s_min"] > 0


def test_model_id_cannot_reach_outside_the_sweep_directory(tmp_path):
    out = make_sweep_dir(tmp_path / "s", models=("../escape", "adv"), attacks=("pgd",), gallery=False)
    write_gallery(tmp_path / "escape.npz")  # where gallery/../escape.npz would point
    html = robustcnn.report(out).read_text()
    assert html.count("Gallery not in this sweep.") == 2 and "data:image/" not in html


def test_gallery_of_a_model_id_with_odd_characters_is_found(tmp_path):
    """The sweep names files with results.file_stem; the report must read them back by the same rule."""
    model = "my run <1>"
    out = make_sweep_dir(tmp_path / "s", models=(model,), attacks=("pgd",), gallery=False)
    write_gallery(out / "gallery" / f"{file_stem(model)}.npz")
    html = robustcnn.report(out).read_text()
    assert "Gallery not in this sweep." not in html and "data:image/" in html


def test_reference_eps_sources():
    threat = ModelEntry.from_json({"threat_model": {"norm": "inf", "eps": 0.3}}, "m")
    assert reference_eps(None, threat, "inf") == 0.3
    assert reference_eps(None, threat, "2") is None  # a Linf threat model says nothing about L2
    assert reference_eps(Manifest(suite={"reference_eps": "8/255"}), threat, "inf") == pytest.approx(8 / 255)
    suite = Manifest(suite={"reference_eps": {"Linf": 0.1, "L2": 0.5}})
    assert reference_eps(suite, threat, "inf") == 0.1 and reference_eps(suite, threat, "2") == 0.5
    assert reference_eps(Manifest(suite={"reference_eps": None}), ModelEntry("m"), "inf") is None


def test_headline_picks_the_grid_eps_closest_to_the_reference():
    frame = normalize_results(make_results(("m",), ("pgd",), eps=(0, 0.1, 0.25, 0.4)))
    manifest = Manifest(suite={"reference_eps": 0.3})
    table = headline(frame, {"m": ModelEntry("m")}, manifest)
    assert [c.label for c in table.columns] == ["clean", "pgd (eps 0.25)", "worst-case (eps 0.25)"]
    guessed = headline(frame, {"m": ModelEntry("m")}, None)
    assert guessed.guessed and guessed.columns[1].eps == 0.1  # the middle of the grid


@pytest.mark.parametrize(
    ("eps", "text"), [(0.3, "0.3"), (8 / 255, "8/255"), (0.2, "0.2"), (0.0, "0"), (0.123456, "0.1235"), (math.nan, "-")]
)
def test_format_eps(eps, text):
    assert format_eps(eps) == text


def test_markdown_escape_keeps_tables_intact():
    assert markdown_escape("a|b\nc") == r"a\|b c"


def test_nice_ticks():
    assert nice_ticks(0, 0.3) == [0, 0.1, 0.2, 0.3]
    assert nice_ticks(0.2, 1.15) == [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]
    assert nice_ticks(1, 10, integer=True) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(1, 3, integer=True) == [1, 2, 3]
    assert nice_ticks(0.05, 0.3) == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def test_normalize_requires_the_core_columns():
    with pytest.raises(UsageError, match="lacks the column"):
        normalize_results(pd.DataFrame({"model": ["m"]}))
    frame = make_results(("m",), ("pgd",))
    assert list(normalize_results(frame).columns[: len(COLUMNS)]) == COLUMNS


def test_report_package_imports_no_torch():
    code = "import sys, robustcnn.report, robustcnn.report.__main__; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_headline_reads_the_eps_the_sweep_chose_and_bolds_only_at_one_eps():
    results = normalize_results(make_results(("m",), ("fgsm", "pgd"), (0.1, 0.3)))
    chosen = {"reference_eps": {"inf": 0.3}, "headline_eps": {"fgsm": 0.1, "pgd": 0.3, "worst-case": 0.3}}
    table = headline(results, {"m": ModelEntry.from_json(chosen, "m")}, None)
    names = [c.attack for c in table.columns]
    (_, cells) = table.rows[0]
    fgsm, pgd = cells[names.index("fgsm")], cells[names.index("pgd")]
    assert (fgsm.eps, pgd.eps) == (0.1, 0.3) and not table.guessed
    assert not fgsm.strongest and not pgd.strongest  # 0.1 against 0.3 says nothing about which is stronger
    same = {**chosen, "headline_eps": {"fgsm": 0.3, "pgd": 0.3, "worst-case": 0.3}}
    (_, cells) = headline(results, {"m": ModelEntry.from_json(same, "m")}, None).rows[0]
    bold = [names[i] for i, c in enumerate(cells) if c is not None and c.strongest]
    lowest = min(("fgsm", "pgd"), key=lambda a: cells[names.index(a)].accuracy)
    assert bold == [lowest]
