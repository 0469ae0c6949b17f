"""The arrows of the architecture, held by parsing imports (lazy ones inside functions included).

The report reads results, never the machinery that made them: report/, compare/, export/, the cell file and the
per-example outcomes, and results.py import no torch and none of sweep, train, attacks or models, so the report
renders fast and re-runs on old results. results.py, the contract between sweep and report, imports nothing of
robustcnn at all. The data layer is the first link of the chain: it
imports none of the packages after it, and the parts of an image folder import one way (files, classes, listing,
decode), so none of them reaches back to the package that puts them together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "robustcnn"
HEAVY = ("torch", "torchvision", "art", "robustcnn.sweep", "robustcnn.train", "robustcnn.attacks", "robustcnn.models")
REPORT_SIDE = [
    *sorted((PACKAGE / "report").rglob("*.py")),
    *sorted((PACKAGE / "compare").rglob("*.py")),  # the report's paired comparisons, and compare OLD NEW
    *sorted((PACKAGE / "export").rglob("*.py")),
    PACKAGE / "outcomes.py",
    PACKAGE / "cell_file.py",
    PACKAGE / "results.py",
]
DATA_SIDE = sorted((PACKAGE / "data").rglob("*.py"))
AFTER_DATA = tuple(f"robustcnn.{name}" for name in ("models", "train", "attacks", "sweep", "report", "results", "cli"))
IMAGEFOLDER_PARTS = ("files", "classes", "listing", "decode")  # each imports only those before it


def imports(source: str, path: Path) -> set[str]:
    """Every module the source of `path` (a file of the package) imports, as absolute names, wherever it does."""
    package = ["robustcnn", *path.relative_to(PACKAGE).parent.parts]  # what a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("path", REPORT_SIDE, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_the_report_side_imports_no_torch_and_no_sweep(path):
    heavy = sorted(name for name in imports(path.read_text(encoding="utf-8"), path) if under(name, HEAVY))
    assert not heavy, f"{path.name} imports {heavy}"


def test_results_imports_nothing_of_ours():
    path = PACKAGE / "results.py"
    ours = sorted(name for name in imports(path.read_text(encoding="utf-8"), path) if under(name, ("robustcnn",)))
    assert not ours, f"results.py imports {ours}"


@pytest.mark.parametrize("path", DATA_SIDE, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_the_data_layer_imports_nothing_after_it(path):
    later = sorted(name for name in imports(path.read_text(encoding="utf-8"), path) if under(name, AFTER_DATA))
    assert not later, f"{path.name} imports {later}"


@pytest.mark.parametrize("position", range(len(IMAGEFOLDER_PARTS)), ids=IMAGEFOLDER_PARTS)
def test_image_folder_parts_import_one_way(position):
    path = PACKAGE / "data" / "imagefolder" / f"{IMAGEFOLDER_PARTS[position]}.py"
    allowed = tuple(f"robustcnn.data.imagefolder.{part}" for part in IMAGEFOLDER_PARTS[:position])
    found = imports(path.read_text(encoding="utf-8"), path)
    back = sorted(name for name in found if under(name, ("robustcnn.data.imagefolder",)) and not under(name, allowed))
    assert not back, f"{path.name} imports {back}; the order is {IMAGEFOLDER_PARTS}"


def test_lazy_and_relative_imports_are_seen():
    """The tests above can fail: an import inside a function, or a relative one, counts."""
    source = "def f():\n    import torch\n    from ..sweep import runner\n    from . import format\n"
    found = imports(source, PACKAGE / "report" / "probe.py")
    assert {"torch", "robustcnn.sweep.runner", "robustcnn.report.format"} <= found
    assert sorted(name for name in found if under(name, HEAVY)) == [
        "robustcnn.sweep",
        "robustcnn.sweep.runner",
        "torch",
    ]
