"""python -m benchmarks.peak_rss FILE MODULE ARGS...: runs `python -m MODULE ARGS...` and writes its peak RSS to FILE.

The peak is VmHWM of /proc/self/status, read as the module ends: the high-water mark of this process's own
memory since its exec. wait4's ru_maxrss is not that: Linux carries a forked child's maximum over from the parent
it was forked from (through exec), so a child of a benchmark that holds torch reports at least the parent's size.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise OSError("no VmHWM in /proc/self/status")


def entry() -> None:
    report, module, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        report.write_text(str(peak_bytes()))


if __name__ == "__main__":
    entry()
