"""The report of a 20-model sweep stays small and readable: checks as a model x check matrix with the problems
first, one look per model shared by every figure and legend, and a page far below its old size.

The sweep is real (`report_fixtures.many_models_sweep`: 20 briefly trained linear models, FGSM, PGD-3 and a
2-step patch on 100 mnist5k images; about 15-30 s on 2 busy cores), built once for the module.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from report_fixtures import make_sweep_dir, many_models_sweep

from robustcnn.report import images, write_report
from robustcnn.report.checks import titles
from robustcnn.report.matrix import Cell, check_matrix
from robustcnn.report.plots import model_styles
from robustcnn.report.render import compact_json
from robustcnn.results import Check, Status

MODELS = [f"m{i:02d}" for i in range(20)]
# Measured on this sweep: 650 KB before the matrix, the shared plot styles and the gallery contact sheets,
# 391 KB after (lossless WebP pictures; Pillow without libwebp writes PNG, about 45 KB more). The bound is
# the after-size plus 15%: it holds with either encoder, and a per-model copy of anything (a gallery per
# image, a colour per point, a row per check) breaks it. The report of the 1.9 MB page had the same causes.
MAX_BYTES = 450_000
# The colour worst case (20 galleries of CIFAR-sized noise, which no lossless encoder compresses): 1.6 MB with 8
# examples per model (benchmarks/results/scale), 515 KB with 2; the bound is that plus 15%.
MAX_NOISE_BYTES = 600_000


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[str, dict]:
    out = many_models_sweep(tmp_path_factory.mktemp("many"), count=len(MODELS))
    html = (out / "report.html").read_text(encoding="utf-8")
    return html, json.loads((out / "checks.json").read_text(encoding="utf-8"))


class MatrixReader(HTMLParser):
    """The matrix table's header names and rows: (model, [(class, title, text) per cell])."""

    def __init__(self) -> None:
        super().__init__()
        self.columns: list[str] = []
        self.rows: list[tuple[str, list[tuple[str, str, str]]]] = []
        self._in_table = self._in_head = False
        self._cell: list | None = None  # [tag, class, title, text]

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("class") == "matrix":
            self._in_table = True
        elif self._in_table and tag == "thead":
            self._in_head = True
        elif self._in_table and tag == "tr" and not self._in_head:
            self.rows.append(("", []))
        elif self._in_table and tag in ("th", "td"):
            self._cell = [tag, attrs.get("class", ""), attrs.get("title", ""), ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[3] += data

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag == "thead":
            self._in_head = False
        elif self._in_table and tag in ("th", "td") and self._cell is not None:
            kind, cls, title, text = self._cell
            if self._in_head:
                self.columns.append(text.strip())
            elif kind == "th":
                self.rows[-1] = (text.strip(), self.rows[-1][1])
            else:
                self.rows[-1][1].append((cls, title, text.strip()))
            self._cell = None


def matrix(html: str) -> MatrixReader:
    reader = MatrixReader()
    reader.feed(html)
    return reader


def test_the_page_of_20_models_stays_small(many):
    html, _ = many
    assert len(html.encode("utf-8")) < MAX_BYTES


def test_the_matrix_has_a_row_per_model_and_a_column_per_check(many):
    html, checks = many
    table = matrix(html)
    assert [model for model, _ in table.rows] == MODELS
    names = list(dict.fromkeys(c["name"] for c in checks["checks"] if c["model"] is not None))
    assert table.columns[0] == "model" and sorted(table.columns[1:]) == sorted(names)
    assert set(titles()) <= set(table.columns)  # every registered check, the sweep's model checks after them
    assert all(len(cells) == len(names) for _, cells in table.rows)


def test_no_check_result_is_lost(many):
    html, checks = many
    table = matrix(html)
    names = table.columns[1:]
    cells = {(model, name): cell for model, row in table.rows for name, cell in zip(names, row, strict=True)}
    for c in checks["checks"]:
        cls, title, text = cells[(c["model"], c["name"])]
        assert c["status"] in text.split() and c["status"] in cls.split()
        assert c["message"] in title
    assert sum(len(text.split()) for _, row in table.rows for _, _, text in row) == len(checks["checks"])


def test_failures_and_warnings_come_first_and_passes_are_folded(many):
    html, checks = many
    problems = checks["counts"]["fail"] + checks["counts"]["warn"]
    assert problems > 0  # the fixture's patch and PGD-3 leave a few warnings: the list is tested, not empty
    first_plot = html.index('<svg class="plot"')
    folded = html.index('<details class="matrix">')  # no `open`: passes and skips start folded
    before = html[:first_plot]
    rows = re.findall(r'<tr class="check (\w+)">', before)
    assert len(rows) == problems and set(rows) <= {"fail", "warn"}  # 280 rows before this change
    assert rows == sorted(rows, key=["fail", "warn"].index)  # failures first
    assert before.rindex('<tr class="check') < folded < first_plot
    summary = re.search(r"<summary>Every check of every model: (.*?)</summary>", html).group(1)
    assert "20 models" in summary and all(f"{n} {s}" in summary for s, n in checks["counts"].items())


def test_every_model_is_in_the_headline_and_each_legend_with_its_own_look(many):
    html, _ = many
    headline = html[html.index('<table class="headline">') : html.index("</table>", html.index('"headline"'))]
    rows = re.findall(r'<tr><th><svg class="swatch"[^>]*><use href="#sw(\d+)"/></svg>([^<]+)</th>', headline)
    assert [model for _, model in rows] == MODELS and [int(i) for i, _ in rows] == list(range(20))
    legends = re.findall(r'<div class="legend">(.*?)</div>', html, flags=re.S)
    assert legends and all(re.findall(r"</svg>([^<]+)</span>", legend) == MODELS for legend in legends)
    assert html.count('<marker id="mk') == html.count('<symbol id="sw') == 20  # each look defined once


def test_figures_reference_the_shared_looks_instead_of_copying_them(many):
    html, _ = many
    figures = re.findall(r'<svg class="plot".*?</svg>', html, flags=re.S)
    lines = [line for figure in figures for line in re.findall(r"<polyline [^>]*>", figure)]
    assert len(lines) >= 20 * len(figures) - 20  # a line per model (the patch's success panel may lack some)
    assert all(re.fullmatch(r'<polyline class="line s\d+( thin)?" points="[-\d., ]+"/>', line) for line in lines)
    assert not any("<circle" in figure for figure in figures)  # markers are <marker>s, not one element per point


def test_20_models_get_20_distinct_looks():
    styles = model_styles(MODELS)
    looks = {(s.color, s.marker, s.dashed) for s in styles.values()}
    assert len(looks) == 20
    assert styles["m00"].marker != styles["m10"].marker  # same colour: a different marker as well as dashes


def test_check_matrix_keeps_every_check_and_puts_problems_first():
    checks = [
        Check.of("large-eps", Status.PASS, "fine", "a"),
        Check.of("large-eps", Status.WARN, "odd", "b"),
        Check.of("model-check", Status.PASS, "first", "b"),
        Check.of("model-check", Status.FAIL, "second", "b"),  # two results of one name: both kept
        Check.of("sweep-wide", Status.SKIP, "nothing to judge", None),
        Check.of("large-eps", Status.PASS, "fine", "extra"),  # a model the manifest did not list
    ]
    table = check_matrix(checks, ["a", "b", "c"])
    assert table.columns == ["large-eps", "model-check"]
    assert [model for model, _ in table.rows] == ["a", "b", "c", "extra"]
    (_, b) = table.rows[1]
    assert b[1].status is Status.FAIL and b[1].text == "pass fail" and "fail: second" in b[1].title
    assert table.rows[2][1] == [Cell(()), Cell(())] and table.rows[2][1][0].text == "not run"
    assert [c.status for c in table.problems] == [Status.FAIL, Status.WARN]
    assert [c.name for c in table.sweep_wide] == ["sweep-wide"]
    cells = sum(len(cell.checks) for _, row in table.rows for cell in row)
    assert cells + len(table.sweep_wide) == len(checks)


def test_compact_json_reads_back_the_same():
    value = {"models": [{"id": "m", "checks": [{"name": "x" * 30, "status": "pass"}] * 5}], "n": 3, "empty": {}}
    text = compact_json(value, width=80)
    assert json.loads(text) == value and max(len(line) for line in text.splitlines()) <= 80
    assert '{"name": "' + "x" * 30 + '", "status": "pass"}' in text  # a short object stays on one line


def test_a_contact_sheet_puts_each_example_in_its_row_and_column():
    from robustcnn.report.images import GAP, contact_sheet

    rows = [np.full((3, 4, 5), value, dtype=np.float32) for value in (0.0, 0.25, 0.5)]  # 3 rows of (k=3, H=4, W=5)
    sheet = contact_sheet(rows)
    assert sheet.shape == (3 * (4 + GAP) - GAP, 3 * (5 + GAP) - GAP)
    for r, value in enumerate((0.0, 0.25, 0.5)):
        for i in range(3):
            top, left = r * (4 + GAP), i * (5 + GAP)
            assert (sheet[top : top + 4, left : left + 5] == value).all()
    assert (sheet[4, :] == 1.0).all()  # white between the rows


def test_pictures_fall_back_to_png_without_libwebp(monkeypatch):
    picture = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    monkeypatch.setattr(images, "WEBP", False)
    assert images.image_uri(picture).startswith("data:image/png;base64,")
    monkeypatch.setattr(images, "WEBP", True)
    assert images.image_uri(picture).startswith("data:image/webp;base64,")


def test_20_colour_galleries_of_noise_keep_the_page_small(tmp_path):
    """The worst case for the gallery: CIFAR-sized colour images of pure noise, which no lossless encoder
    compresses (~9 KB per example). 20 models x 8 saved examples made a 1.6 MB page (benchmarks/results/scale);
    with 20 models each shows 2, and says where all 8 are."""
    out = make_sweep_dir(tmp_path / "sweep", models=MODELS, attacks=("fgsm", "pgd"), training=False, gallery=False)
    rng = np.random.default_rng(0)
    for model in MODELS:
        x = rng.random((8, 3, 32, 32), dtype=np.float32)  # (k, C, H, W) noise in [0, 1]
        x_adv = np.clip(x + 8 / 255 * np.sign(rng.standard_normal(x.shape)), 0, 1).astype(np.float32)
        y = np.arange(8) % 10
        (out / "gallery").mkdir(exist_ok=True)
        np.savez(out / "gallery" / f"{model}.npz", x=x, x_adv=x_adv, y=y, pred=y, pred_adv=(y + 1) % 10,
                 attack=np.array("pgd"), eps=np.array(8 / 255))  # fmt: skip
    write_report(out)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert images.examples_per_model(len(MODELS)) == 2
    assert html.count("2 examples of 8 (all 8 in gallery/") == len(MODELS)
    assert len(html.encode("utf-8")) < MAX_NOISE_BYTES
