"""Lets a package be called like its main function: `robustcnn.train(...)` and `python -m robustcnn.train`.

A function and a subpackage cannot both be the attribute `robustcnn.train`. Rather than let one shadow
the other (which breaks `robustcnn.train.TrainConfig` or lazy imports), the package itself is made
callable and forwards to its public function.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable


def make_callable(module_name: str, function: Callable) -> None:
    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    CallableModule.__call__.__doc__ = function.__doc__
    sys.modules[module_name].__class__ = CallableModule
