"""`imagefolder:PATH`: your own images, one folder per class, or an ImageNet-style evaluation set.

Which split is which. A plain folder (class folders with names of your own) keeps its classes in sorted order and
is trainable: PATH/train and PATH/test (or PATH/val) are the two splits, else PATH/<class>/* is split 80/20,
stratified and seeded. A folder whose labels come from a class map is a labelled evaluation set: its labels mean
what a model trained elsewhere means by them (ImageNet index 0 is n01440764 whatever subset of classes the
folder holds), so splitting it would only throw test images away, and training on it is not what it is for. Its
test split is PATH/val when that exists, else PATH, whole; it has no train split (`DatasetInfo.has_train` is
False, as for an npz of test data only). A class map comes from:
- the folder names themselves, when every class folder is a WordNet id (n01440764): the 1000-class ImageNet-1k
  index, the position in the sorted list `imagenet_wnids.txt` (timm's imagenet_synsets.txt; torchvision's order);
- --class-map FILE: a text file, one class per line (first token the folder name, the line number from 0 the
  index, the rest a human name: timm's imagenet_synsets.txt and ImageNet's LOC_synset_mapping.txt as they are),
  or a JSON object {"folder name": index};
- --labels FILE: PATH holds the images directly, FILE has a `NAME,LABEL` or `NAME LABEL` line per image (a header
  line is skipped); the labels are names of the class map (ImageNet-1k without --class-map) or indices.
A folder name or label outside the class map is an error, never a class of its own. --subset FILE names the test
images to keep, in its order (paths relative to the test folder, or bare names when unique).

Sizes. Without --resize / --crop all images must share one size and be all greyscale or all colour: we do not
resize silently, because a resize changes what an eps means. With them each image is transformed as
torchvision's ImageNet eval transform does (`ResNet50_Weights.IMAGENET1K_V2.transforms()`): converted to RGB
as torchvision's ImageFolder loader does (unless every image is greyscale, or kept grey), the shorter side resized
to --resize (antialiased, --interpolation), centre-cropped to --crop; the uint8 pixels are bit for bit theirs.

Memory. The folder is indexed (paths, labels) and every image's header checked once; pixels are decoded only for
the images evaluated (`load_subset`), by DataLoader workers into one preallocated tensor. The mean/std of an
evaluation set is ImageNet's for the ImageNet map, else that of a seeded sample of SAMPLE_IMAGES images; a plain
folder's is its whole train split's, as it always was.

Images are found by extension (EXTENSIONS) and opened only as the formats those extensions name: a file of
another format, such as PostScript that Pillow would hand to Ghostscript, is refused rather than decoded. These
are refused too, each with one line naming the file, from the headers before any image is decoded: a path that
is not a regular file (a named pipe would block the read forever), a link that leads outside PATH, an image of
more than MAX_IMAGE_PIXELS pixels (Pillow's own decompression-bomb limits are higher), and a folder whose images
together would take more than MAX_DATA_BYTES in memory. Class-map, labels and subset files are read as text of
at most MAX_LIST_BYTES, never evaluated.

Where each part lives: files.py (which paths are read and how an image is opened), classes.py (class maps and the
user's text files), listing.py (the images of each split and their labels), decode.py (header checks, the eval
transform, decoding in workers); this module registers the source and puts the parts together (`_folder`).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from robustcnn.data.base import (
    DATASETS,
    DataOptions,
    DatasetInfo,
    EvalTransform,
    FolderOptions,
    Source,
    Split,
    check_data_bytes,
)
from robustcnn.data.imagefolder.classes import (
    MAX_LIST_BYTES,
    ClassMap,
    class_folders,
    find_class_map,
    imagenet_map,
)
from robustcnn.data.imagefolder.decode import check_headers, decode_files, describe
from robustcnn.data.imagefolder.files import EXTENSIONS, FORMATS, MAX_IMAGE_PIXELS
from robustcnn.data.imagefolder.listing import (
    Folder,
    Listing,
    index_folder,
    labelled_files,
    pick_subset,
    plain_splits,
    train_folder,
)
from robustcnn.errors import UsageError
from robustcnn.threat import Norm, ThreatModel

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_IMAGE_PIXELS",
    "MAX_LIST_BYTES",
    "ClassMap",
    "ImageFolderSource",
    "imagenet_map",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what ImageNet models were trained with, [0, 1] units
IMAGENET_STD = (0.229, 0.224, 0.225)
SAMPLE_IMAGES = 512  # images decoded for the mean/std of an evaluation set: enough for 3 decimals
SAMPLE_SEED = 0
DEFAULT_THREAT = ThreatModel(Norm.LINF, 8 / 255)
IMAGENET_THREAT = ThreatModel(Norm.LINF, 4 / 255)  # RobustBench's ImageNet budget (its L2 one is 3.0)
_TRAIN_DEFAULTS = {"epochs": 30, "batch_size": 64, "optimizer": "adam", "lr": 1e-3}


@DATASETS.register("imagefolder")
class ImageFolderSource(Source):
    lazy = True  # labels from the listing, images decoded only when asked for

    def info(self, options: DataOptions) -> DatasetInfo:
        return _info(_root(options), options.folder)

    def load(self, split: Split, options: DataOptions) -> tuple[torch.Tensor, torch.Tensor]:
        return _read_split(_root(options), options.folder, split)

    def labels(self, split: Split, options: DataOptions) -> torch.Tensor:
        return torch.tensor(_folder(_root(options), options.folder).listing(split).labels, dtype=torch.long)

    def load_subset(self, split: Split, options: DataOptions, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        folder = _folder(_root(options), options.folder)
        listing = folder.listing(split)
        files = [listing.files[i] for i in index]
        return decode_files(files, folder), torch.tensor([listing.labels[i] for i in index], dtype=torch.long)

    def file_names(self, split: Split, options: DataOptions, index: np.ndarray | None) -> list[str]:
        listing = _folder(_root(options), options.folder).listing(split)  # cached: indexed once per sweep
        files = listing.files if index is None else [listing.files[i] for i in index]
        return [path.relative_to(listing.folder).as_posix() for path in files]  # as --subset names them


@lru_cache(maxsize=4)
def _info(root: Path, options: FolderOptions) -> DatasetInfo:
    folder = _folder(root, options)
    imagenet = folder.class_map is not None and folder.class_map.imagenet
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else _mean_std(folder, options)
    return DatasetInfo(
        name=f"imagefolder:{folder.root}",
        shape=folder.shape,
        class_names=folder.class_names,
        mean=mean,
        std=std,
        threat_model=IMAGENET_THREAT if imagenet else DEFAULT_THREAT,
        l2_eps=3.0 if imagenet else 0.5,
        train_defaults=dict(_TRAIN_DEFAULTS),
        has_train=Split.TRAIN in folder.splits,
        folder=options,
        variant=folder.variant,
    )


def _root(options: DataOptions) -> Path:
    if not options.argument:
        raise UsageError("dataset 'imagefolder' needs a path: write imagefolder:PATH")
    root = Path(options.argument).expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"imagefolder path {str(root)!r} is not a directory")
    return root


@lru_cache(maxsize=4)
def _read_split(root: Path, options: FolderOptions, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split decoded (what training reads; for an evaluation set, `load_subset` reads fewer)."""
    folder = _folder(root, options)
    listing = folder.listing(split)
    return decode_files(listing.files, folder), torch.tensor(listing.labels, dtype=torch.long)


def _mean_std(folder: Folder, options: FolderOptions) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per channel, [0, 1] units: of the whole train split of a plain folder (what training normalises with), of a
    seeded sample of at most SAMPLE_IMAGES test images of an evaluation set."""
    if Split.TRAIN in folder.splits:
        x, _ = _read_split(folder.root, options, Split.TRAIN)
    else:
        files = folder.splits[Split.TEST].files
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(SAMPLE_SEED))
        x = decode_files([files[i] for i in sorted(order[:SAMPLE_IMAGES].tolist())], folder)
    pixels = x.float().div(255)  # (N, C, H, W) in [0, 1]
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).nan_to_num(0.0).clamp_min(1e-3)  # nan: a sample of one pixel value
    return tuple(mean.tolist()), tuple(std.tolist())


@lru_cache(maxsize=4)
def _folder(root: Path, options: FolderOptions) -> Folder:
    """Indexes the folder by the rules of the module docstring and checks every header (no pixels decoded)."""
    transform = _checked_transform(options)
    test_folder = root / "val" if (root / "val").is_dir() else root
    class_map = find_class_map(options, test_folder, root)
    if options.labels:
        splits = {Split.TEST: labelled_files(test_folder, root, Path(options.labels).expanduser(), class_map)}
    elif class_map is not None:
        splits = {Split.TEST: index_folder(test_folder, root, class_map)}
    else:
        splits = plain_splits(root)
    if options.subset:
        splits[Split.TEST] = pick_subset(splits[Split.TEST], Path(options.subset).expanduser())
    files = [path for listing in splits.values() for path in listing.files]
    shape = check_headers(files, transform, rgb=class_map is not None and class_map.imagenet)
    if Split.TRAIN in splits:  # trainable: both splits are held in memory at once, as they always were
        what = f"imagefolder {root}: {len(files)} images of {describe(shape)}"
        check_data_bytes(what, len(files) * math.prod(shape))
    names = class_map.names if class_map is not None else tuple(class_folders(train_folder(root)))
    return Folder(root, splits, names, shape, transform, class_map, _variant(transform, class_map, splits[Split.TEST]))


def _checked_transform(options: FolderOptions) -> EvalTransform:
    transform = options.transform
    if transform.resize is not None and transform.crop is not None and transform.resize < transform.crop:
        raise UsageError(
            f"--resize {transform.resize} is smaller than --crop {transform.crop}: the shorter side is resized "
            f"first, then cropped; give --resize {transform.crop} or more (ImageNet: --resize 256 --crop 224)"
        )
    if options.interpolation is not None and transform.resize is None:
        raise UsageError(f"--interpolation {options.interpolation.value} applies to --resize only; give --resize N")
    return transform


def _variant(transform: EvalTransform, class_map: ClassMap | None, test: Listing) -> str:
    """What identifies the images beyond the path: cached results are keyed on it. "" for a plain folder. The
    labels and subset files count by the hashes of the bytes the listing was built from, not of a second read."""
    parts = [transform.describe()] if transform.describe() else []
    if class_map is not None:
        parts.append("ImageNet-1k classes" if class_map.imagenet else f"class map sha256 {class_map.sha256[:16]}")
    return "; ".join([*parts, *test.read_from])
