"""python -m benchmarks.capped_sweep FRACTION SWEEP_ARGS...: `python -m robustcnn.sweep` with the CUDA allocator capped.

`torch.cuda.set_per_process_memory_fraction(FRACTION)` before the sweep starts, so that a batch too large for
the cap runs out of memory for real and the sweep's back-off is exercised (make gpu-check). CUDA only.
"""

from __future__ import annotations

import sys

import torch

from robustcnn.cli import run_main
from robustcnn.sweep.__main__ import main


def entry() -> None:
    fraction, argv = float(sys.argv[1]), sys.argv[2:]
    torch.cuda.set_per_process_memory_fraction(fraction)  # of the current device: the sweep's --device cuda
    sys.exit(run_main(main, argv, name="robustcnn.sweep"))


if __name__ == "__main__":
    entry()
