"""What every `python -m robustcnn.X` shares: user errors become one line and exit code 2, no traceback."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from robustcnn.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, RunFailed, UsageError


def _stop_like_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


def run_main(main: Callable[[list[str]], int], argv: list[str] | None = None, name: str = "robustcnn") -> int:
    # Batch schedulers and `kill` send SIGTERM: stop as cleanly as on Ctrl-C (status saved, resume hint).
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RunFailed as error:
        print(f"{name}: failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
