"""A torchrun entry point for tests/test_distributed_train.py: `python -m robustcnn.train` with rank 1 made to
fail on purpose as its second epoch starts, so that the other rank's reaction can be tested.

    torchrun --standalone --nproc_per_node=2 tests/ddp_entry.py MODE [robustcnn.train flags]

MODE: `nan` (rank 1's loss is nan from then on), `kill` (rank 1 kills itself with SIGKILL, as `kill -9` would)
or `term` (rank 1 gets SIGTERM, as from `kill` or a batch scheduler).
"""

from __future__ import annotations

import os
import signal
import sys

from robustcnn.train import __main__ as cli
from robustcnn.train.loop import _Trainer
from robustcnn.train.methods import Method

FAULT_EPOCH = 1  # 0-based: the second epoch, so that the first one's checkpoint exists


def _at_fault_epoch(act) -> None:
    original = _Trainer._epoch

    def epoch(self, train_set, state, epoch, *args):
        if epoch == FAULT_EPOCH:
            act()
        return original(self, train_set, state, epoch, *args)

    _Trainer._epoch = epoch


def _nan_loss() -> None:
    original = Method.loss

    def loss(self, x, y, eps):
        value, logits = original(self, x, y, eps)
        return value * float("nan"), logits

    Method.loss = loss


FAULTS = {
    "nan": lambda: _at_fault_epoch(_nan_loss),
    "kill": lambda: _at_fault_epoch(lambda: os.kill(os.getpid(), signal.SIGKILL)),
    "term": lambda: _at_fault_epoch(lambda: os.kill(os.getpid(), signal.SIGTERM)),
}

if __name__ == "__main__":
    mode = sys.argv.pop(1)
    if os.environ["RANK"] == "1":
        FAULTS[mode]()
    cli.entry()
