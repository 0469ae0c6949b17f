"""Which images a split holds, in which order, with which labels: class folders indexed, a plain folder split, a
flat folder labelled by a --labels file, a --subset file picked. Every file found is checked (`check_file`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustcnn.data.base import EvalTransform, Split, stratified_split
from robustcnn.data.imagefolder.classes import ClassMap, class_folders, read_list
from robustcnn.data.imagefolder.files import EXTENSIONS, check_file, check_inside
from robustcnn.errors import UsageError

SPLIT_SEED = 0


@dataclass(frozen=True, eq=False)
class Listing:
    """One split: its images and their labels, in order; `folder` is what --subset names are relative to."""

    folder: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    read_from: tuple[str, ...] = ()  # the list files it was built from, as "labels sha256 ..." (the bytes read)


@dataclass(frozen=True, eq=False)
class Folder:
    """An image folder indexed and header-checked once: what every later read of it relies on."""

    root: Path
    splits: dict[Split, Listing]
    class_names: tuple[str, ...]
    shape: tuple[int, int, int]  # (C, H, W) of every image after the transform
    transform: EvalTransform
    class_map: ClassMap | None  # None: a plain folder (sorted folder names, trainable)
    variant: str = ""  # the transform and the label files' hashes: part of the dataset's identity

    @property
    def mode(self) -> str:
        return "L" if self.shape[0] == 1 else "RGB"

    def listing(self, split: Split) -> Listing:
        if split not in self.splits:
            raise UsageError(
                f"imagefolder {self.root} is a labelled evaluation set ({self.class_map.what} labels), so it has no "
                "train split; train on a folder of your own classes (PATH/train and PATH/test)"
            )
        return self.splits[split]


def plain_splits(root: Path) -> dict[Split, Listing]:
    """Your own classes: PATH/train with PATH/test or PATH/val, else PATH/<class>/* split 80/20."""
    for test_name in ("test", "val"):
        if (root / "train").is_dir() and (root / test_name).is_dir():
            train, test = index_folder(root / "train", root), index_folder(root / test_name, root)
            train_names, test_names = class_folders(root / "train"), class_folders(root / test_name)
            if test_names != train_names:
                raise UsageError(f"{root}/{test_name} has classes {test_names} but {root}/train has {train_names}")
            return {Split.TRAIN: train, Split.TEST: test}
    whole = index_folder(root, root)
    what = f"imagefolder {root} (80/20 train/test split)"
    names = class_folders(root)
    train, test = stratified_split(np.asarray(whole.labels), test_size=0.2, seed=SPLIT_SEED, what=what, names=names)
    pick = lambda keep: Listing(root, tuple(whole.files[i] for i in keep), tuple(whole.labels[i] for i in keep))
    return {Split.TRAIN: pick(train), Split.TEST: pick(test)}


def train_folder(root: Path) -> Path:
    return root / "train" if (root / "train").is_dir() and any((root / s).is_dir() for s in ("test", "val")) else root


def index_folder(folder: Path, root: Path, class_map: ClassMap | None = None) -> Listing:
    """The image files of `folder`'s class folders (all checked by `check_file`) and their labels: the class
    folder's index in `class_map`, or without one its position among the sorted class folders."""
    classes = class_folders(folder)
    files, labels = [], []
    for position, name in enumerate(classes):
        label = position if class_map is None else _class_index(class_map, name, folder)
        check_inside(folder / name, root)
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in EXTENSIONS)
        for path in found:
            check_file(path, root)
        files += found
        labels += [label] * len(found)
    if not files:
        raise UsageError(f"no images found under {folder}; expected {folder}/<class>/*.png (or .jpg, .bmp, ...)")
    if class_map is None and len(classes) < 2:
        raise UsageError(f"{folder} has {len(classes)} class folder(s); a classifier needs at least 2")
    return Listing(folder, tuple(files), tuple(labels))


def _class_index(class_map: ClassMap, name: str, folder: Path) -> int:
    if name in class_map.index:
        return class_map.index[name]
    if class_map.imagenet:
        raise UsageError(
            f"class folder {name!r} in {folder} is not one of the 1000 ImageNet-1k classes (WordNet ids of "
            "robustcnn/data/imagefolder/imagenet_wnids.txt); remove it, or give --class-map FILE for another "
            "label space"
        )
    raise UsageError(f"class folder {name!r} in {folder} is not in the class map {class_map.what}; add it or remove it")


def labelled_files(folder: Path, root: Path, path: Path, class_map: ClassMap) -> Listing:
    """The images directly in `folder`, labelled by the lines of the labels file `path`."""
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and not p.is_dir())
    if not images:
        raise UsageError(f"no images found directly in {folder}; with --labels the images lie in PATH (or PATH/val)")
    for image in images:
        check_file(image, root)
    by_name = {p.name: p for p in images}
    stems: dict[str, list[Path]] = {}
    for image in images:
        stems.setdefault(image.stem, []).append(image)
    text, sha256 = read_list(path, "labels file")
    labels: dict[Path, int] = {}
    missing: list[str] = []
    for number, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        name, _, rest = (part.strip() for part in line.partition(",")) if "," in line else _split_pair(line)
        label = _label(class_map, rest.split()[0] if rest.split() else "")
        if label is None:
            if not labels and not missing and name not in by_name and name not in stems:
                continue  # the first line, naming no image: a header such as ImageId,PredictionString
            raise UsageError(
                f"labels file {path} line {number + 1}: label {rest.split()[0] if rest.split() else ''!r} of {name!r} "
                f"is neither a class of {class_map.what} nor an index 0..{len(class_map.names) - 1}"
            )
        matches = [by_name[name]] if name in by_name else stems.get(name, [])
        if len(matches) != 1:
            if len(matches) > 1:
                raise UsageError(f"labels file {path} line {number + 1}: {name!r} matches {len(matches)} images")
            missing.append(name)
            continue
        if matches[0] in labels:
            raise UsageError(f"labels file {path} line {number + 1}: {matches[0].name} is labelled twice")
        labels[matches[0]] = label
    if missing:
        raise UsageError(
            f"{len(missing)} name(s) in labels file {path} match no image in {folder}; the first: {missing[0]!r}"
        )
    unlabelled = [p for p in images if p not in labels]
    if unlabelled:
        raise UsageError(
            f"{len(unlabelled)} image(s) in {folder} have no label in {path}; the first: {unlabelled[0].name}"
        )
    return Listing(folder, tuple(images), tuple(labels[p] for p in images), (f"labels sha256 {sha256[:16]}",))


def _split_pair(line: str) -> tuple[str, str, str]:
    parts = line.split(None, 1)
    return parts[0], " ", parts[1] if len(parts) > 1 else ""


def _label(class_map: ClassMap, token: str) -> int | None:
    """A label token: a name of the class map, or an index into it; None when it is neither."""
    if token in class_map.index:
        return class_map.index[token]
    if re.fullmatch(r"\d{1,9}", token) and int(token) < len(class_map.names):
        return int(token)
    return None


def pick_subset(listing: Listing, path: Path) -> Listing:
    """The images --subset FILE names, in its order: paths relative to the test folder, or bare unique names."""
    text, sha256 = read_list(path, "subset file")
    by_path = {p.relative_to(listing.folder).as_posix(): i for i, p in enumerate(listing.files)}
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(listing.files):
        by_name.setdefault(p.name, []).append(i)
    chosen: list[int] = []
    seen: dict[int, int] = {}
    for number, line in enumerate(text.splitlines()):
        name = line.strip()
        if not name:
            continue
        where = by_path.get(name.replace(os.sep, "/"))
        if where is None:
            found = by_name.get(name, [])
            if len(found) > 1:
                raise UsageError(
                    f"subset file {path} line {number + 1}: {name!r} names {len(found)} images in {listing.folder}; "
                    f"write its folder too, e.g. {listing.files[found[0]].relative_to(listing.folder).as_posix()}"
                )
            if not found:
                raise UsageError(
                    f"subset file {path} line {number + 1}: {name!r} matches no test image in {listing.folder}"
                )
            where = found[0]
        if where in seen:
            raise UsageError(f"subset file {path} names {name!r} twice (lines {seen[where] + 1} and {number + 1})")
        seen[where] = number
        chosen.append(where)
    if not chosen:
        raise UsageError(f"subset file {path} names no image")
    files, labels = tuple(listing.files[i] for i in chosen), tuple(listing.labels[i] for i in chosen)
    return Listing(listing.folder, files, labels, (*listing.read_from, f"subset sha256 {sha256[:16]}"))
