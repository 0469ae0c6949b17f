"""Class maps: folder or label names to class indices (the ImageNet-1k WordNet ids, or a --class-map file), which
one applies to a folder, and the user's small text files (class map, labels, subset) read safely."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from robustcnn.data.base import MAX_CLASSES, FolderOptions
from robustcnn.data.imagefolder.files import FILE_KINDS
from robustcnn.errors import UsageError

MAX_LIST_BYTES = 16 << 20  # a class map, labels or subset file; ImageNet's LOC_val_solution.csv (50000 lines) is 2.6 MB
WNID = re.compile(r"n\d{8}")  # a WordNet id, the name of an ImageNet class folder


@dataclass(frozen=True, eq=False)
class ClassMap:
    """Names (of folders or labels) to class indices, for an evaluation set."""

    what: str  # for messages: "ImageNet-1k" or the file
    names: tuple[str, ...]  # index -> human-readable class
    index: Mapping[str, int]  # folder or label name -> index
    imagenet: bool = False  # the ImageNet-1k map: ImageNet's mean/std and threat model
    sha256: str = ""  # of the file it was read from ("" for the shipped ImageNet list)


def class_folders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def find_class_map(options: FolderOptions, test_folder: Path, root: Path) -> ClassMap | None:
    """--class-map FILE; else ImageNet-1k when labels are given or every class folder is a WordNet id; else None."""
    if options.class_map:
        return _read_class_map(Path(options.class_map).expanduser())
    if options.labels:
        return imagenet_map()
    classes = class_folders(test_folder) if test_folder.is_dir() else []
    if classes and all(WNID.fullmatch(name) for name in classes):
        return imagenet_map()
    return None


@lru_cache(maxsize=1)
def imagenet_map() -> ClassMap:
    """The 1000 ImageNet-1k WordNet ids in their sorted order (torchvision's and timm's class indices)."""
    wnids = resources.files("robustcnn.data.imagefolder").joinpath("imagenet_wnids.txt").read_text().split()
    try:
        from torchvision.models._meta import _IMAGENET_CATEGORIES as names  # private, but the names are only shown
    except ImportError:
        names = wnids
    if len(names) != len(wnids):
        names = wnids
    return ClassMap("ImageNet-1k", tuple(names), {wnid: i for i, wnid in enumerate(wnids)}, imagenet=True)


def read_list(path: Path, what: str) -> tuple[str, str]:
    """A small text file given by the user: its text and sha256. Refused when not a regular file, too big or not
    UTF-8."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise UsageError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"{what} {path} is {FILE_KINDS.get(stat.S_IFMT(mode), 'a special file')}, not a text file")
    with path.open("rb") as file:
        data = file.read(MAX_LIST_BYTES + 1)
    if len(data) > MAX_LIST_BYTES:
        raise UsageError(f"{what} {path} is larger than {MAX_LIST_BYTES >> 20} MiB; it should be a short text file")
    try:
        return data.decode("utf-8-sig"), hashlib.sha256(data).hexdigest()
    except UnicodeDecodeError as error:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {error.start})") from None


def _read_class_map(path: Path) -> ClassMap:
    text, sha256 = read_list(path, "class map")
    if text.lstrip().startswith("{"):
        names, index = _json_class_map(path, text)
    else:
        names, index = _text_class_map(path, text)
    if not index:
        raise UsageError(f"class map {path} names no class")
    return ClassMap(str(path), names, index, sha256=sha256)


def _text_class_map(path: Path, text: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """One class per line: `NAME [human name]`; the line number (from 0) is the index."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > MAX_CLASSES:
        raise UsageError(f"class map {path} has {len(lines)} lines; at most {MAX_CLASSES} classes")
    names, index = [], {}
    for number, line in enumerate(lines):
        parts = line.split(None, 1)
        if not parts:
            raise UsageError(f"class map {path} line {number + 1} is empty; each line is one class (its index)")
        if parts[0] in index:
            raise UsageError(f"class map {path} names {parts[0]!r} twice (lines {index[parts[0]] + 1}, {number + 1})")
        index[parts[0]] = number
        names.append(parts[1].strip() if len(parts) > 1 else parts[0])
    return tuple(names), index


def _json_class_map(path: Path, text: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """{"folder name": index}: whole indices from 0, each used once; the classes are 0..max index."""

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        keys = [key for key, _ in items]
        twice = next((key for key in keys if keys.count(key) > 1), None)
        if twice is not None:
            raise UsageError(f"class map {path} names {twice!r} twice")
        return dict(items)

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except (json.JSONDecodeError, RecursionError) as error:
        raise UsageError(f"class map {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f'class map {path} must be a JSON object {{"folder name": index}}')
    owners: dict[int, str] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_CLASSES:
            raise UsageError(
                f"class map {path}: {name!r} has index {value!r}; indices are whole numbers 0..{MAX_CLASSES - 1}"
            )
        if value in owners:
            raise UsageError(f"class map {path}: index {value} is given to both {owners[value]!r} and {name!r}")
        owners[value] = name
    names = tuple(owners.get(i, str(i)) for i in range(max(owners, default=-1) + 1))
    return names, dict(data)
