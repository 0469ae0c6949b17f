"""ART's first import on a machine, made safe when several processes make it at once.

Importing ART runs `art/config.py` (ART 1.20), which creates `~/.art/config.json` (under /tmp when the home
folder is not writable) if the file is missing, by checking twice and then writing in place. Two processes
importing ART for the first time at once (torchrun's ranks, Ray workers on a new node, a fresh container)
race: one sees no file, the other creates it, the first then skips both branches and dies with
`NameError: name '_config' is not defined`, or reads a half-written file and goes on without ART_DATA_PATH.

`import_art()` writes the file ART would write, atomically (a temp file renamed over it), before ART is
imported: every process then finds a whole file and only reads it. Every `import art` / `from art...` in
robustcnn comes after a call to it (tests/test_hostile_distributed.py checks the source).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from robustcnn.errors import UsageError
from robustcnn.fileio import atomic_path

CONFIG_FILE = "config.json"  # ART's name for it, in its folder


def art_folder() -> Path:
    """Where ART 1.20 keeps its config, decided as art/config.py decides it."""
    home = os.path.expanduser("~")
    if not os.access(home, os.W_OK):
        home = "/tmp"
    return Path(os.path.join(home, ".art"))


def write_art_config() -> None:
    """Writes ART's default config file, atomically, unless one is there (a user's own is never touched).

    The content is what ART writes: its data folder beside the config. A failure (read-only folder, full disk)
    is left to ART, which warns and goes on as it always did.
    """
    folder = art_folder()
    path = folder / CONFIG_FILE
    if path.exists():
        return
    text = json.dumps({"ART_DATA_PATH": os.path.join(str(folder), "data")}, indent=4)
    with contextlib.suppress(OSError, UsageError):  # atomic_path turns a failed write into a UsageError
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf8")


def import_art() -> None:
    """Imports ART once its config file is in place; call it before any `from art... import ...`."""
    if "art" in sys.modules:
        return
    write_art_config()
    import art  # noqa: F401
