"""The report in a real browser, offline: headless Chromium (Debian's `chromium`) driven by Playwright.

Every http(s) request is aborted and counted (there must be none), the console must stay free of errors,
a hostile run name must show as text, and a full-page screenshot is written to the test's tmp dir.
Skipped when Chromium or Playwright is missing, unless CI=true: CI installs both, so there it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from report_fixtures import make_sweep_dir

import robustcnn.report

EVIL = "<script>alert(1)</script>"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
INSTALL = "apt-get install -y chromium && pip install playwright"


def require(available: bool, what: str) -> None:
    """Skip when a browser tool is missing; fail instead on CI, where it must be installed."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not installed, and CI=true requires it ({INSTALL})")
    pytest.skip(f"{what} is not installed ({INSTALL})")


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or next((p for p in CHROMIUM_PATHS if Path(p).exists()), None)


def test_require_skips_locally_and_fails_on_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require(False, "chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        require(False, "chromium")
    require(True, "chromium")


def test_report_renders_offline_in_chromium(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    require(sync_playwright is not None, "playwright (Python package)")
    executable = chromium()
    require(executable is not None, "chromium")

    models = ("std", EVIL, "adv")
    out = make_sweep_dir(
        tmp_path / "sweep", models=models, attacks=("fgsm", "pgd", "square", "patch"), suite=EVIL, class_names=[
            f"<i>digit {i}</i>" for i in range(10)]
    )  # fmt: skip
    page_path = robustcnn.report(out)

    blocked, errors, dialogs = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
            context.route(
                "**/*",
                lambda route: (
                    (blocked.append(route.request.url), route.abort())
                    if route.request.url.startswith(("http:", "https:", "ws:", "wss:"))
                    else route.continue_()
                ),
            )
            page = context.new_page()
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(page_path.as_uri(), wait_until="load")

            assert page.title() == f"Robustness report: {EVIL}"
            assert page.locator("table.headline tbody tr").count() == len(models)
            assert EVIL in page.inner_text("table.headline")  # shown as text, not run
            assert page.evaluate("document.scripts.length") == 0
            plots = page.locator("svg.plot")
            assert plots.count() == 3 + 1 + 1 + 1  # 3 eps attacks, worst case, patch, training
            for i in range(plots.count()):
                box = plots.nth(i).bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 150
            assert page.locator("svg.plot polyline").count() >= 3 * len(models)
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            assert page.locator("#gallery img").count() == 2  # a sheet per model; EVIL can't be a file name
            page.locator("#gallery details summary").first.click()  # galleries are folded: open one
            assert page.locator("#gallery img").first.bounding_box()["width"] > 6 * 60  # 6 examples, scaled up
            assert "<i>digit 1</i>" in page.inner_text("#gallery")
            assert page.locator(".badge.fail").count() >= 1  # the tally shows "0 fail"
            assert page.locator("table.matrix tbody tr").count() == len(models)
            assert not page.locator("table.matrix").is_visible()  # passes and skips are folded away
            page.locator("details.matrix summary").click()
            assert page.locator("table.matrix").is_visible()
            mark = page.evaluate("getComputedStyle(document.querySelector('td.c.pass'), '::before').content")
            assert "\u2713" in mark  # the mark is drawn; the word "pass" is there for screen readers
            marker = page.locator("svg.plot polyline.line").first.evaluate("e => getComputedStyle(e).markerMid")
            assert marker.startswith("url(") and "mk0" in marker  # markers come from the shared definitions
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()

    assert blocked == [], f"the report tried to load from the network: {blocked}"
    assert errors == [], f"console errors: {errors}"
    assert dialogs == [], f"a dialog opened: {dialogs}"
    assert (tmp_path / "report.png").stat().st_size > 10_000
