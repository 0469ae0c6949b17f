"""`path/to/file.py:builder` and `package.module:builder`: a callable of the user's that returns an nn.Module.

The builder is called with the --model-arg values as keyword arguments. A file is imported with its own
folder on sys.path, so it can import the modules beside it, as it would in the user's own script.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

from torch import nn

from robustcnn.errors import UsageError, last_line
from robustcnn.fileio import sha256_file
from robustcnn.models.external import LOADERS, Built, Loader
from robustcnn.models.external.model import Model


def _split(spec: str) -> tuple[str, str]:
    where, _, name = spec.rpartition(":")
    return where, name


@LOADERS.register("python")
class PythonBuilder(Loader):
    priority = 100  # any X:Y; torchvision:NAME and timm:NAME are claimed before

    @classmethod
    def matches(cls, spec: str) -> bool:
        where, name = _split(spec)
        dotted = bool(where) and all(part.isidentifier() for part in where.split("."))
        return name.isidentifier() and (where.endswith(".py") or dotted)

    def build(self, model: Model, num_classes: int, download: bool) -> Built:
        spec = str(model.source)
        where, name = _split(spec)
        module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
        builder = getattr(module, name, None)
        if builder is None:
            found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
            raise UsageError(f"{where} has no {name!r}; callables in it: {', '.join(found) or 'none'}")
        if not callable(builder):
            raise UsageError(f"{spec}: {name!r} is a {type(builder).__name__}, not a callable returning an nn.Module")
        net = _call(builder, spec, model.model_args)
        return Built(net, spec, _source_sha256(module))


def _call(builder, spec: str, arguments: dict) -> nn.Module:
    try:
        net = builder(**arguments)
    except Exception as error:  # the user's code: any exception is theirs to fix, said in one line
        raise UsageError(f"builder {spec} raised {type(error).__name__}: {last_line(error)}") from None
    if not isinstance(net, nn.Module):
        raise UsageError(f"builder {spec} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def _import_file(path: Path) -> ModuleType:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"model file {str(path)!r} does not exist")
    name = "robustcnn_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling inside the file look themselves up here
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise UsageError(f"cannot import {path}: {type(error).__name__}: {last_line(error)}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _import_module(dotted: str) -> ModuleType:
    try:
        return importlib.import_module(dotted)
    except Exception as error:
        hint = "; is it installed, or on PYTHONPATH?" if isinstance(error, ModuleNotFoundError) else ""
        raise UsageError(
            f"cannot import module {dotted!r} ({type(error).__name__}: {last_line(error)}){hint}"
        ) from None


def _source_sha256(module: ModuleType) -> str | None:
    """The builder's own file: a changed architecture must not reuse cached results of the old one."""
    try:
        source = inspect.getsourcefile(module)
    except TypeError:  # built-in or namespace module
        return None
    return sha256_file(source) if source and Path(source).is_file() else None
