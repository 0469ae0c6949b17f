"""The arrows of the architecture, held by parsing imports (lazy ones inside functions included).

The report reads results, never the machinery that made them: report/ and results.py import no torch and none of
sweep, train, attacks or models, so the report renders fast and re-runs on old results. results.py, the contract
between sweep and report, imports nothing of robustcnn at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "robustcnn"
HEAVY = ("torch", "torchvision", "art", "robustcnn.sweep", "robustcnn.train", "robustcnn.attacks", "robustcnn.models")
REPORT_SIDE = sorted((PACKAGE / "report").rglob("*.py")) + [PACKAGE / "results.py"]


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
