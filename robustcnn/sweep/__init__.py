"""Attack sweeps: `robustcnn.sweep(models, suite=...)` in Python, `python -m robustcnn.sweep` on the command line."""

from robustcnn.callable_module import make_callable
from robustcnn.sweep.api import GateFailed, sweep
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.suite import Suite, load_suite, suite_names

__all__ = ["GateFailed", "Suite", "SweepConfig", "load_suite", "suite_names", "sweep"]

make_callable(__name__, sweep)
