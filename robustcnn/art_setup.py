"""ART's first import on a machine, made safe when several processes make it at once.

Importing ART runs `art/config.py` (ART 1.20), which creates `~/.art/config.json` (under /tmp when the home
folder is not writable) if the file is missing, by checking twice and then writing in place. Two processes
importing ART for the first time at once (torchrun's ranks, Ray workers on a new node, a fresh container)
race: one sees no file, the other creates it, the first then skips both branches and dies with
`NameError: name '_config' is not defined`, or reads a half-written file and goes on without ART_DATA_PATH.

`import_art()` writes the file ART would write, atomically (a temp file renamed over it), before ART is
imported: every process then finds a whole file and only reads it. Every `import art` / `from art...` in
robustcnn comes after a call to it (tests/test_hostile_distributed.py checks the source).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import types
from pathlib import Path

from robustcnn.errors import UsageError
from robustcnn.fileio import atomic_path

CONFIG_FILE = "config.json"  # ART's name for it, in its folder


def art_folder() -> Path:
    """Where ART 1.20 keeps its config, decided as art/config.py decides it."""
    home = os.path.expanduser("~")
    if not os.access(home, os.W_OK):
        home = "/tmp"
    return Path(os.path.join(home, ".art"))


def write_art_config() -> None:
    """Writes ART's default config file, atomically, unless one is there (a user's own is never touched).

    The content is what ART writes: its data folder beside the config. A failure (read-only folder, full disk)
    is left to ART, which warns and goes on as it always did.
    """
    folder = art_folder()
    path = folder / CONFIG_FILE
    if path.exists():
        return
    text = json.dumps({"ART_DATA_PATH": os.path.join(str(folder), "data")}, indent=4)
    with contextlib.suppress(OSError, UsageError):  # atomic_path turns a failed write into a UsageError
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf8")


def import_art() -> None:
    """Makes ART importable, piece by piece, once its config file is in place; call it before any `from art...`.

    `import art` imports all of ART (every attack, defence, estimator and metric: ~0.5 s of every sweep's start-up),
    because each of its package `__init__` files imports its whole folder. Here ART's packages load lazily
    (`LazyArtPackages`): importing `art.attacks.evasion.square_attack` runs that module and what it imports, and a
    name taken from a package (`from art.attacks.evasion import SquareAttack`) imports the one module its `__init__`
    takes it from. So a suite imports only the attacks it runs.
    """
    if "art" in sys.modules:
        return
    write_art_config()
    sys.meta_path.insert(0, LazyArtPackages())
    logging.getLogger("art").addHandler(logging.NullHandler())  # what art/__init__.py's logging setup does for "art"
    import art  # noqa: F401


class LazyArtPackages(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook for ART's packages (folders with an `__init__.py` under `art`): each becomes a `LazyPackage`, whose
    `__init__.py` runs only if a name is asked of it that none of its modules' imports in that file provides."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != "art" and not fullname.startswith("art."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and fullname in SCIPY_DEFERRED:
            spec.loader = ScipyDeferred(spec.loader, *SCIPY_DEFERRED[fullname])
            return spec
        if spec is None or not spec.submodule_search_locations or not str(spec.origin).endswith("__init__.py"):
            return None  # a plain module: imported as always
        return importlib.util.spec_from_file_location(
            fullname, spec.origin, loader=self, submodule_search_locations=spec.submodule_search_locations
        )

    def create_module(self, spec):
        return LazyPackage(spec)

    def exec_module(self, module) -> None:
        """Nothing runs at import: the package's names resolve on first use (`LazyPackage.__getattr__`)."""


class LazyPackage(types.ModuleType):
    """An ART package whose `__init__.py` has not run: a name is its submodule, or the module the `__init__.py`
    imports it from (read from the file's import statements, not run), or, for anything else, the whole file."""

    def __init__(self, spec):
        super().__init__(spec.name)
        self.__spec__, self.__file__, self.__path__ = spec, spec.origin, list(spec.submodule_search_locations)
        self.__package__ = spec.name

    def __getattr__(self, name: str):
        if name.startswith("__") and name not in ("__version__", "__all__"):
            raise AttributeError(name)  # module attributes Python looks up (__path__, __getattr__ of `from ... import`)
        folder = Path(self.__path__[0])
        if (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file():
            return importlib.import_module(f"{self.__name__}.{name}")
        source = _imported_names(self.__file__, self.__name__).get(name)
        if source is not None:
            value = getattr(importlib.import_module(source), name)
        else:  # assigned in the __init__ itself (a version, a constant): run the file, as `import` would have
            importlib.machinery.SourceFileLoader(self.__name__, self.__file__).exec_module(self)
            if name not in self.__dict__:
                raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
            value = self.__dict__[name]
        setattr(self, name, value)
        return value


# ART modules that import a scipy name at the top that robustcnn's use of them never calls, or calls rarely: the
# module it comes from costs more than the rest of the sweep's start-up (scipy.stats ~0.5-1 s, scipy.special ~0.25 s).
# ART's PGD takes truncnorm only with `random_eps=True` (never set here); art.utils takes gammainc only for random
# starts in an L2 ball (`random_sphere`).
SCIPY_DEFERRED = {
    "art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_numpy": ("scipy.stats", "truncnorm"),
    "art.utils": ("scipy.special", "gammainc"),
}


class ScipyDeferred(importlib.abc.Loader):
    """Loads an ART module (`SCIPY_DEFERRED`) with its `from scipy.X import NAME` answered by a stand-in that imports
    scipy.X when first used. The stand-in module is in sys.modules only while that one module runs."""

    def __init__(self, loader, module: str, name: str):
        self.loader, self.module, self.name = loader, module, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        if self.module in sys.modules:
            self.loader.exec_module(module)
            return
        stand_in = types.ModuleType(self.module)
        setattr(stand_in, self.name, _Deferred(self.module, self.name))
        sys.modules[self.module] = stand_in
        try:
            self.loader.exec_module(module)
        finally:
            if sys.modules.get(self.module) is stand_in:
                del sys.modules[self.module]


class _Deferred:
    """MODULE.NAME, imported on first use."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args, **kwargs):
        return self._target()(*args, **kwargs)

    def __getattr__(self, attribute: str):
        return getattr(self._target(), attribute)

    def _target(self):
        return getattr(importlib.import_module(self.module), self.name)


@functools.cache
def _imported_names(init_file: str, package: str) -> dict[str, str]:
    """name -> the module a package's `__init__.py` imports it from (`from MODULE import name`), read with ast."""
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"))
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.util.resolve_name("." * node.level + node.module, package) if node.level else node.module
            names.update({alias.asname or alias.name: module for alias in node.names if alias.name != "*"})
    return names
