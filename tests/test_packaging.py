"""The wheel carries the suites and the report templates, and an installed copy finds suites by name."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


@pytest.mark.slow  # builds a wheel (make test-all runs it)
def test_installed_wheel_finds_suites_by_name(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("robustcnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        f"robustcnn/suites/{s}.toml" for s in ("quick", "standard", "autoattack-grade", "madry-mnist", "cifar10-linf")
    } <= set(names)
    assert "robustcnn/report/templates/report.html.j2" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = "from robustcnn.sweep.suite import load_suite; s = load_suite('quick'); print(s.path)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.strip().startswith(str(site / "robustcnn" / "suites"))


def test_every_package_of_the_source_tree_is_in_the_wheel_list():
    """pyproject.toml lists the packages by hand; a new subpackage left off it is missing from every install
    (robustcnn.sweep.kinds once was), which only the slow wheel test above would otherwise see."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "robustcnn").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
