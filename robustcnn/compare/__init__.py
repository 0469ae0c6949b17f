"""Is model B really more robust than model A? Paired tests on the per-example results of two sweeps, or of two
models in one: `robustcnn.compare(OLD, NEW)` in Python, `python -m robustcnn.compare OLD NEW` on the command line
(with `--fail-if-drop PP`: the CI gate for a robustness regression)."""

from robustcnn.callable_module import make_callable
from robustcnn.compare.compare import Comparison, compare
from robustcnn.compare.paired import PairedDifference, mcnemar_exact, newcombe_interval, paired_difference

__all__ = ["Comparison", "PairedDifference", "compare", "mcnemar_exact", "newcombe_interval", "paired_difference"]

make_callable(__name__, compare)
