"""Messages for people: through tqdm so they never tear a progress bar, on stderr so stdout stays data.

(Not `logging`: importing ART calls `logging.config.dictConfig`, which disables loggers made before it.)
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

_quiet = False  # set on torchrun's ranks other than 0: rank 0 speaks for the whole job


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def say(message: str) -> None:
    if not _quiet:
        tqdm.write(message, file=sys.stderr)


def progress(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar on stderr; disabled automatically when stderr is not a terminal (CI logs stay readable)."""
    kwargs.setdefault("disable", True if _quiet else None)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, file=sys.stderr, **kwargs)
