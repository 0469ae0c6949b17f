"""Training: `robustcnn.train(...)` in Python, `python -m robustcnn.train` on the command line."""

from robustcnn.callable_module import make_callable
from robustcnn.train.config import AdvMethod, Amp, Optimizer, Schedule, TrainConfig
from robustcnn.train.loop import train
from robustcnn.train.methods import METHODS

__all__ = ["METHODS", "AdvMethod", "Amp", "Optimizer", "Schedule", "TrainConfig", "train"]

make_callable(__name__, train)
