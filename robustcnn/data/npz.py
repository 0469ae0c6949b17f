"""`npz:PATH`: your own test data (and optionally training data) as one NumPy .npz file.

Keys: `x_test` and `y_test`; optionally `x_train` with `y_train`, and `class_names` (1-D strings). Images are
uint8 0..255 or float 0..1, shaped (N, H, W) for greyscale, or (N, C, H, W) / (N, H, W, C) with C = 1 or 3.
The layout is read from the shape; when the shape fits both, append `#nchw` or `#nhwc` to PATH to say which.
Float images stay float (as float32): rounding them to 8 bits would change the images the model is tested on.
Labels are class indices 0..K-1, K = len(class_names) if given, else the largest label + 1.

Example::

    np.savez("mine.npz", x_test=x, y_test=y, class_names=np.array(["cat", "dog"]))  # x: (N, 32, 32, 3) uint8
    load_dataset("npz:mine.npz")  # or "npz:mine.npz#nhwc" to force the layout

The file is read with `allow_pickle=False`: an object array could run code when unpickled. Before any data is
read, each array's .npy header (shape, dtype) is checked: together the arrays may take at most MAX_DATA_BYTES in
memory, and every array must hold the bytes its header claims. Labels must be below MAX_CLASSES, and so must
the number of class_names: a label of 2**62 would otherwise ask for 2**62 class names.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from robustcnn.console import say
from robustcnn.data.base import DATASETS, MAX_CLASSES, DataOptions, DatasetInfo, Source, Split, check_data_bytes
from robustcnn.errors import UsageError, first_line
from robustcnn.threat import Norm, ThreatModel

LAYOUTS = ("nchw", "nhwc")  # the suffixes PATH#nchw / PATH#nhwc
CHANNELS = (1, 3)  # greyscale or colour, as imagefolder: the report draws images as L or RGB
REQUIRED_KEYS = ("x_test", "y_test")
OPTIONAL_KEYS = ("x_train", "y_train", "class_names")
ALLOWED_KEYS = "required: x_test, y_test; optional: x_train with y_train, class_names"
PIXELS_ALLOWED = "images must be uint8 0..255 or float (float16/32/64) 0..1"
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclass(frozen=True)
class NpzData:
    """One file, read and checked once."""

    x_test: torch.Tensor  # (N, C, H, W) uint8, or float32 in [0, 1]
    y_test: torch.Tensor  # (N,) int64
    x_train: torch.Tensor | None  # as x_test; None when the file has no x_train
    y_train: torch.Tensor | None  # (M,) int64
    class_names: tuple[str, ...]  # given, or "0".."K-1"
    mean: tuple[float, ...]  # per channel, [0, 1] units, of x_train if present, else of x_test
    std: tuple[float, ...]  # per channel, [0, 1] units, >= 1e-3


@dataclass(frozen=True)
class Header:
    """What one array's .npy header claims, read without its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    stored: int  # bytes of data the zip member holds after the header

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: a huge shape cannot overflow


@DATASETS.register("npz")
class NpzSource(Source):
    def info(self, options: DataOptions) -> DatasetInfo:
        path, layout = _parse(options)
        data = _read_file(path, layout)
        return DatasetInfo(
            # The suffix stays in the name: the name is how a run or a sweep loads this data again.
            name=f"npz:{path}" + (f"#{layout}" if layout else ""),
            shape=tuple(int(s) for s in data.x_test.shape[1:]),
            class_names=data.class_names,
            mean=data.mean,
            std=data.std,
            # A generic budget, as for imagefolder: for data where 8/255 means little, set absolute eps in the suite.
            threat_model=ThreatModel(Norm.LINF, 8 / 255),
            l2_eps=0.5,
            train_defaults={"epochs": 30, "batch_size": 64, "optimizer": "adam", "lr": 1e-3},
            has_train=data.x_train is not None,
        )

    def load(self, split: Split, options: DataOptions) -> tuple[torch.Tensor, torch.Tensor]:
        path, layout = _parse(options)
        data = _read_file(path, layout)
        if split is Split.TEST:
            return data.x_test, data.y_test
        if data.x_train is None:
            raise UsageError(
                f"{path} has no x_train/y_train, so it has no train split; add both arrays to train on it "
                "(evaluating needs only x_test/y_test)"
            )
        return data.x_train, data.y_train


def _parse(options: DataOptions) -> tuple[Path, str | None]:
    """The resolved file and the forced layout ('nchw', 'nhwc') or None."""
    if not options.argument:
        raise UsageError("dataset 'npz' needs a path: write npz:PATH (or npz:PATH#nchw, npz:PATH#nhwc)")
    text, layout = _split_layout(options.argument)
    path = Path(text).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"npz file {str(path)!r} does not exist (or is not a file)")
    return path, layout


def _split_layout(argument: str) -> tuple[str, str | None]:
    head, hash_sign, tail = argument.rpartition("#")
    if hash_sign and tail.lower() in LAYOUTS:
        return head, tail.lower()
    # A '#' may be part of a file name; it is a mistyped layout only when the part before it is the file.
    if hash_sign and Path(head).expanduser().is_file():
        raise UsageError(f"unknown layout suffix '#{tail}' in npz:{argument}; choose #nchw or #nhwc")
    return argument, None


def _read_file(path: Path, layout: str | None) -> NpzData:
    stat = path.stat()
    return _read(path, layout, (stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=2)
def _read(path: Path, layout: str | None, stamp: tuple[int, int]) -> NpzData:
    """The whole file, checked; `stamp` (mtime, size) is only in the cache key, so an edited file is read again."""
    arrays = _open(path)
    test_layout = _layout(path, "x_test", arrays["x_test"].shape, layout)
    x_test, y_test = _split(path, arrays, "test", test_layout)
    x_train = y_train = train_layout = None
    if "x_train" in arrays:
        # Read as x_test was, unless x_test is greyscale (N, H, W) and so says nothing about the layout.
        train_layout = _layout(path, "x_train", arrays["x_train"].shape, layout or test_layout)
        x_train, y_train = _split(path, arrays, "train", train_layout)
        _check_same_shape(path, x_train, x_test)
    labels = {"y_test": y_test} if y_train is None else {"y_test": y_test, "y_train": y_train}
    class_names = _class_names(path, arrays.get("class_names"), labels)
    mean, std = _mean_std(x_test if x_train is None else x_train)
    say(_announcement(path, arrays, (test_layout, train_layout), layout))
    return NpzData(x_test, torch.from_numpy(y_test), x_train, _tensor(y_train), class_names, mean, std)


def _split(
    path: Path, arrays: dict[str, np.ndarray], split: str, layout: str | None
) -> tuple[torch.Tensor, np.ndarray]:
    x = _images(path, f"x_{split}", arrays[f"x_{split}"], layout)
    return x, _labels(path, f"y_{split}", arrays[f"y_{split}"], len(x))


def _tensor(y: np.ndarray | None) -> torch.Tensor | None:
    return None if y is None else torch.from_numpy(y)


def _open(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)  # never unpickle: the file could run code
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        # numpy's own message for a non-zip file suggests unpickling it: not advice to pass on.
        raise UsageError(f"{path} is not an .npz file (a zip of arrays, as np.savez writes)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UsageError(f"{path} holds a single .npy array; save x_test, y_test, ... together with np.savez")
    with archive:
        members = _members(path, archive.zip)
        _check_keys(path, list(members))
        headers = {key: _header(path, key, archive.zip, member) for key, member in members.items()}
        _check_sizes(path, headers)
        return {key: _array(path, key, archive.zip, member) for key, member in members.items()}


def _members(path: Path, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The zip member of each key (np.savez writes KEY.npy). A key stored twice is refused: which copy a reader
    takes is up to the reader, so the checked copy might not be the one read."""
    members = {}
    for member in archive.infolist():
        key = member.filename.removesuffix(".npy")
        if key in members:
            raise UsageError(f"{path} holds {key} twice; save each array once (as np.savez does)")
        members[key] = member
    return members


def _check_keys(path: Path, keys: list[str]) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in keys]
    if ("x_train" in keys) != ("y_train" in keys):
        missing.append("x_train" if "y_train" in keys else "y_train")
    unknown = sorted(set(keys) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unknown:  # e.g. a misspelt class_names, which would otherwise be dropped silently
        problems.append(f"unknown {', '.join(unknown)}")
    if problems:
        raise UsageError(
            f"{path} has keys {', '.join(sorted(keys)) or '(none)'}: {'; '.join(problems)} ({ALLOWED_KEYS})"
        )


# What a damaged or foreign zip member raises: RuntimeError for an encrypted one, NotImplementedError for an
# unknown compression method, ValueError for a bad .npy header or missing data.
_UNREADABLE = (ValueError, OSError, EOFError, RuntimeError, zipfile.BadZipFile)


def _header(path: Path, key: str, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> Header:
    """The shape and dtype the member's .npy header claims, read without the data (numpy.lib.format)."""
    try:
        with archive.open(member) as file:
            version = np.lib.format.read_magic(file)
            if version not in HEADER_READERS:
                raise UsageError(
                    f"{path}: {key} is a .npy file of format version {version[0]}.{version[1]}; versions 1.0 and 2.0 "
                    "are read (np.savez of a numeric array writes 1.0)"
                )
            shape, _, dtype = HEADER_READERS[version](file)
            stored = member.file_size - file.tell()
    except UsageError:
        raise
    except _UNREADABLE as error:
        raise UsageError(f"{path}: {key} is not a readable .npy array ({first_line(error)})") from None
    if dtype.hasobject:
        raise UsageError(
            f"{path}: {key} is an object array (pickled Python objects), not read because unpickling can run "
            "code; save it as a numeric array (strings for class_names)"
        )
    if any(size < 0 for size in shape):
        raise UsageError(f"{path}: {key} claims shape {shape}; sizes must be >= 0")
    return Header(tuple(shape), dtype, stored)


def _check_sizes(path: Path, headers: dict[str, Header]) -> None:
    """Every array fits the memory cap together and holds the bytes its header claims, before any is read."""
    largest = max(headers, key=lambda key: headers[key].nbytes)
    biggest = headers[largest]
    check_data_bytes(
        f"{path}: its arrays (the largest {largest} {biggest.shape} {biggest.dtype})",
        sum(header.nbytes for header in headers.values()),
    )
    for key, header in headers.items():
        if header.stored < header.nbytes:
            raise UsageError(
                f"{path}: {key} claims shape {header.shape} {header.dtype} ({header.nbytes} bytes) but holds "
                f"{header.stored} bytes of data; the file is truncated or corrupt"
            )


def _array(path: Path, key: str, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> np.ndarray:
    try:
        with archive.open(member) as file:
            return np.lib.format.read_array(file, allow_pickle=False)  # never unpickle: the file could run code
    except _UNREADABLE as error:
        raise UsageError(f"{path}: cannot read {key}: {first_line(error)}") from None


def _layout(path: Path, key: str, shape: tuple[int, ...], forced: str | None) -> str | None:
    """'nchw' or 'nhwc' for 4-D images; None for greyscale (N, H, W), which has no channel axis to place."""
    if len(shape) == 3:
        return None
    if len(shape) != 4:
        raise UsageError(f"{path}: {key} has shape {shape}; images must be (N, H, W), (N, C, H, W) or (N, H, W, C)")
    layout = forced or _detect(path, key, shape)
    channels = shape[1] if layout == "nchw" else shape[3]
    if channels not in CHANNELS:
        raise UsageError(
            f"{path}: {key} {shape} read as {layout.upper()} has {channels} channels; images must have 1 (greyscale) "
            "or 3 (colour)"
        )
    return layout


def _detect(path: Path, key: str, shape: tuple[int, ...]) -> str:
    nchw, nhwc = shape[1] in CHANNELS, shape[3] in CHANNELS
    if nchw != nhwc:
        return "nchw" if nchw else "nhwc"
    if not nchw:  # no suffix could help: either reading gives a channel count other than 1 or 3
        raise UsageError(
            f"{path}: {key} has shape {shape}, with neither axis 1 nor axis 3 of size 1 or 3; images must be "
            "greyscale or colour, (N, C, H, W) or (N, H, W, C)"
        )
    raise UsageError(
        f"{path}: {key} has shape {shape}, which fits both NCHW and NHWC; append #nchw or #nhwc to the path "
        "(npz:PATH#nhwc) to say which"
    )


def _images(path: Path, key: str, x: np.ndarray, layout: str | None) -> torch.Tensor:
    """(N, C, H, W) uint8, or float32 in [0, 1]: float64 rounds to float32 and stays in [0, 1]."""
    _check_pixels(path, key, x)
    if layout is None:
        x = x[:, None]
    elif layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    dtype = np.uint8 if x.dtype == np.uint8 else np.float32
    return torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))  # (N, C, H, W), native byte order


def _check_pixels(path: Path, key: str, x: np.ndarray) -> None:
    if x.dtype != np.uint8 and not (x.dtype.kind == "f" and x.dtype.itemsize <= 8):
        raise UsageError(f"{path}: {key} has dtype {x.dtype}; {PIXELS_ALLOWED} (convert with x.astype(np.uint8))")
    if len(x) == 0:
        raise UsageError(f"{path}: {key} holds no images")
    if x.dtype == np.uint8:
        return
    bad = ~((x >= 0) & (x <= 1))  # NaN fails both comparisons, so it is caught too
    if bad.any():
        index = tuple(int(i) for i in np.unravel_index(np.flatnonzero(bad)[0], x.shape))
        raise UsageError(f"{path}: {key} has value {x[index]} at index {index}; {PIXELS_ALLOWED}")


def _check_same_shape(path: Path, x_train: torch.Tensor, x_test: torch.Tensor) -> None:
    train, test = tuple(x_train.shape[1:]), tuple(x_test.shape[1:])
    if train != test:
        raise UsageError(f"{path}: x_train images are {train} (C, H, W) but x_test images are {test}; they must match")


def _labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    """(n,) int64 class indices >= 0; the upper bound is checked against class_names, when given."""
    if y.ndim != 1:
        raise UsageError(f"{path}: {key} has shape {y.shape}; labels must be 1-D, shape ({n},) (use y.ravel())")
    if len(y) != n:
        raise UsageError(f"{path}: {key} has {len(y)} labels but x{key[1:]} has {n} images; they must match")
    if y.dtype.kind == "f":
        _check_whole(path, key, y)
    elif y.dtype.kind not in "iu":
        raise UsageError(f"{path}: {key} has dtype {y.dtype}; labels must be integers (class indices)")
    _check_label_range(path, key, y)
    return y.astype(np.int64)


def _check_label_range(path: Path, key: str, y: np.ndarray) -> None:
    """0 <= label < MAX_CLASSES, compared in the file's dtype: the cast to int64 would wrap 2**64 - 1 to -1."""
    if (y < 0).any():
        raise UsageError(f"{path}: {key} has label {y[y < 0][0]}; labels must be class indices >= 0")
    too_large = y >= MAX_CLASSES
    if too_large.any():
        raise UsageError(
            f"{path}: {key} has label {y[too_large][0]}; labels must be class indices below {MAX_CLASSES} "
            f"(at most {MAX_CLASSES} classes)"
        )


def _check_whole(path: Path, key: str, y: np.ndarray) -> None:
    """Float labels are accepted when they hold whole numbers (as some tools save them), not otherwise."""
    bad = ~(np.isfinite(y) & (np.floor(y) == y))
    if bad.any():
        raise UsageError(f"{path}: {key} has label {y[bad][0]}; labels must be whole numbers (class indices)")


def _class_names(path: Path, names: np.ndarray | None, labels: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The given names, checked against every label, or "0".."K-1" for K = the largest label + 1."""
    if names is None:
        result = tuple(str(i) for i in range(max(int(y.max()) for y in labels.values()) + 1))
    elif names.ndim != 1 or names.dtype.kind not in "US":
        raise UsageError(
            f"{path}: class_names has dtype {names.dtype} and shape {names.shape}; it must be a 1-D array of "
            "strings, e.g. np.array(['cat', 'dog'])"
        )
    elif len(names) > MAX_CLASSES:
        raise UsageError(f"{path}: class_names has {len(names)} entries; at most {MAX_CLASSES} classes are allowed")
    else:
        result = tuple(n.decode(errors="replace") if isinstance(n, bytes) else n for n in names.tolist())
    if len(result) < 2:
        raise UsageError(f"{path}: {len(result)} class(es) {list(result)}; a classifier needs at least 2")
    for key, y in labels.items():
        if (y >= len(result)).any():
            raise UsageError(
                f"{path}: {key} has label {y[y >= len(result)][0]}; labels must be in 0..{len(result) - 1}, "
                f"one per class_names entry"
            )
    return result


def _mean_std(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per channel, [0, 1] units; one channel at a time, so a large uint8 set is never whole as floats."""
    scale = 255.0 if x.dtype == torch.uint8 else 1.0  # mean and std scale with the pixels
    mean, std = [], []
    for c in range(x.shape[1]):
        pixels = x[:, c].float()  # (N, H, W); for float32 data a view of the cached images, so never changed in place
        mean.append(pixels.mean().item() / scale)
        std.append(max(pixels.std().item() / scale, 1e-3))  # a constant channel must not make the model divide by 0
    return tuple(mean), tuple(std)


def _announcement(
    path: Path, arrays: dict[str, np.ndarray], layouts: tuple[str | None, str | None], forced: str | None
) -> str:
    """How the images were read, e.g. "npz:/data/mine.npz: x_test (100, 32, 32, 3) read as NHWC uint8"."""
    parts = [_describe("x_test", arrays["x_test"], layouts[0], forced)]
    if "x_train" in arrays:
        parts.append(_describe("x_train", arrays["x_train"], layouts[1], forced))
    return f"npz:{path}: " + "; ".join(parts)


def _describe(key: str, x: np.ndarray, layout: str | None, forced: str | None) -> str:
    """How one array was read, e.g. "x_test (100, 32, 32, 3) read as NHWC uint8"."""
    how = "greyscale (N, H, W)" if layout is None else layout.upper() + (f" (#{forced})" if forced else "")
    note = ", stored as float32" if x.dtype.kind == "f" and x.dtype.itemsize == 8 else ""
    return f"{key} {x.shape} read as {how} {x.dtype}{note}"
