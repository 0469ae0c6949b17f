"""Hostile data files (issue 25, part II): each is built here, byte by byte where it must lie, and given to
`python -m robustcnn.sweep` and `python -m robustcnn.train` through `run_main`, as tests/test_bad_input_matrix.py
does. The contract: exit code 2, one line naming the file, the bad value and what is allowed, no traceback, no
hang, nothing written to --out, and no decoder beyond the ones the loader names (no Ghostscript).
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import deadline, make_image_folder
from user_models import write_nets

from robustcnn.cli import run_main
from robustcnn.data import load_dataset
from robustcnn.data.base import MAX_CLASSES
from robustcnn.data.imagefolder.files import MAX_IMAGE_PIXELS, open_image
from robustcnn.errors import UsageError
from robustcnn.sweep import __main__ as sweep_cli
from robustcnn.train import __main__ as train_cli

TOOLS = {"sweep": sweep_cli.main, "train": train_cli.main}
FGSM_SUITE = '[[attack]]\nname = "fgsm"\ntype = "fgsm"\nnorm = "inf"\neps = [0.1]\n'
HANG_SECONDS = 60  # far above a refusal (well under a second); only a read that blocks gets near it
EPS_AS_PNG = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 12 10\n%%EndComments\nshowpage\n"  # the size of the others


# --- files that lie --------------------------------------------------------------------------------------------
def png_header(path: Path, width: int, height: int) -> Path:
    """A valid ~70-byte greyscale PNG that claims width x height: Pillow reads the size from IHDR alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)))
    return path


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_header_only(shape: tuple[int, ...], dtype: str, data: bytes = b"\0" * 64) -> bytes:
    """A .npy member whose header claims `shape` while the data after it is `data`."""
    buffer = io.BytesIO()
    header = {"shape": shape, "fortran_order": False, "descr": np.dtype(dtype).str}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)  # (N, H, W) greyscale


def good_npz_members(**changes: bytes) -> dict[str, bytes]:
    """Both splits, so that train reads the file too; `changes` replaces members by name."""
    members = {
        "x_test.npy": npy(digits(12)),
        "y_test.npy": npy(np.arange(12) % 2),
        "x_train.npy": npy(digits(24, 1)),
        "y_train.npy": npy(np.arange(24) % 2),
    }
    return {**members, **changes}


# --- running a tool as `python -m` does ------------------------------------------------------------------------
def argv(tool: str, tmp: Path, dataset: str) -> list[str]:
    """A small sweep of a user's model file into an --out holding earlier results, or a 1-epoch training run."""
    if tool == "sweep":
        suite = tmp / "suite.toml"
        suite.write_text(FGSM_SUITE)
        nets = write_nets(tmp / "user")
        out = ["--out", str(earlier_results(tmp / "out"))]
        return [f"{nets}:smallcnn", "--dataset", dataset, "--suite", str(suite), *out, "--n", "4", "--no-report"]
    return ["--dataset", dataset, "--epochs", "1", "--val-size", "4", "--batch-size", "8", "--out", str(tmp / "out")]


def earlier_results(out: Path) -> Path:
    (out / "cells").mkdir(parents=True)
    (out / "results.csv").write_text("earlier results\n")
    (out / "manifest.json").write_text('{"earlier": true}\n')
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(tool: str, tmp: Path, dataset: str, capsys, *words: str) -> None:
    """Runs the tool on the data; asserts the one-line refusal with `words` and an untouched --out (for train: none
    at all, since the data is checked before the run directory is made)."""
    args = argv(tool, tmp, dataset)
    before = snapshot(tmp / "out")
    capsys.readouterr()  # what the setup printed
    with deadline(HANG_SECONDS):
        code = run_main(TOOLS[tool], args, name=f"robustcnn.{tool}")
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"robustcnn.{tool}: error: "), err
    for word in words:
        assert word in err, (word, err)
    assert snapshot(tmp / "out") == before, "--out was written to"
    assert tool != "train" or not (tmp / "out").exists()


TOOL_NAMES = pytest.mark.parametrize("tool", ["sweep", "train"])


# --- item 6: npz headers and labels ----------------------------------------------------------------------------
@TOOL_NAMES
def test_npz_header_claiming_1e12_elements_is_refused_before_any_data_is_read(tool, tmp_path, capsys):
    members = good_npz_members(**{"x_test.npy": npy_header_only((1_000_000, 1000, 1000), "u1")})
    path = write_zip(tmp_path / "bomb.npz", members)
    refused(
        tool, tmp_path, f"npz:{path}", capsys,
        "bomb.npz: its arrays (the largest x_test (1000000, 1000, 1000) uint8) would take 931.3 GiB in memory",
        "a dataset may take at most 8.0 GiB",
    )  # fmt: skip


@TOOL_NAMES
def test_npz_label_of_2_to_the_62_without_class_names_is_refused(tool, tmp_path, capsys):
    y = np.arange(24) % 2
    y[5] = 2**62  # without class_names this used to mean 2**62 + 1 class names
    path = write_zip(tmp_path / "labels.npz", good_npz_members(**{"y_train.npy": npy(y)}))
    refused(
        tool, tmp_path, f"npz:{path}", capsys,
        f"y_train has label {2**62}", f"labels must be class indices below {MAX_CLASSES}",
    )  # fmt: skip


def test_npz_data_shorter_than_its_header_is_refused_without_allocating_it(tmp_path):
    members = good_npz_members(**{"x_test.npy": npy_header_only((100_000, 100, 100), "u1", b"\0" * 10)})
    path = write_zip(tmp_path / "short.npz", members)
    with pytest.raises(UsageError, match=r"x_test claims shape \(100000, 100, 100\) uint8 .* holds 10 bytes"):
        load_dataset(f"npz:{path}")


def test_npz_object_array_is_refused_from_its_header(tmp_path):
    members = good_npz_members(**{"x_test.npy": npy_header_only((12, 28, 28), "O")})
    path = write_zip(tmp_path / "objects.npz", members)
    with pytest.raises(UsageError, match="x_test is an object array"):
        load_dataset(f"npz:{path}")


def test_npz_member_that_is_not_npy_is_refused(tmp_path):
    path = write_zip(tmp_path / "raw.npz", good_npz_members(**{"x_test.npy": b"just bytes, no .npy header"}))
    with pytest.raises(UsageError, match="x_test is not a readable .npy array"):
        load_dataset(f"npz:{path}")


def test_npz_key_stored_twice_is_refused(tmp_path):
    members = good_npz_members(x_test=npy(digits(3)))  # beside x_test.npy: numpy would read one of the two
    path = write_zip(tmp_path / "twice.npz", members)
    with pytest.raises(UsageError, match="holds x_test twice"):
        load_dataset(f"npz:{path}")


def test_npz_uint64_label_is_named_as_stored_not_wrapped_to_negative(tmp_path):
    y = (np.arange(12) % 2).astype(np.uint64)
    y[3] = 2**64 - 1  # int64 would read it as -1
    path = write_zip(tmp_path / "u64.npz", good_npz_members(**{"y_test.npy": npy(y)}))
    with pytest.raises(UsageError, match=f"y_test has label {2**64 - 1}; labels must be class indices below"):
        load_dataset(f"npz:{path}")


def test_npz_label_just_below_the_cap_is_accepted(tmp_path):
    y = np.arange(12) % 2
    y[0] = MAX_CLASSES - 1
    path = write_zip(tmp_path / "wide.npz", good_npz_members(**{"y_test.npy": npy(y)}))
    assert load_dataset(f"npz:{path}").info.num_classes == MAX_CLASSES


def test_npz_with_more_class_names_than_the_cap_is_refused(tmp_path):
    names = np.array([str(i) for i in range(MAX_CLASSES + 1)])
    path = write_zip(tmp_path / "names.npz", good_npz_members(**{"class_names.npy": npy(names)}))
    with pytest.raises(UsageError, match=f"class_names has {MAX_CLASSES + 1} entries; at most {MAX_CLASSES}"):
        load_dataset(f"npz:{path}")


# --- item 7: decompression bombs -------------------------------------------------------------------------------
def folder_with(tmp: Path, name: str, write: Callable[[Path], object], split: bool = False) -> Path:
    """A good image folder (12x10 colour) with one more file, written by `write`, in its (train/) cat folder."""
    root = make_image_folder(tmp / "images", per_class=5, split=split)
    write(root / ("train" if split else "") / "cat" / name)
    return root


@TOOL_NAMES
def test_png_of_100_bytes_claiming_20000x10000_pixels_is_one_line(tool, tmp_path, capsys):
    root = folder_with(tmp_path, "bomb.png", lambda p: png_header(p, 20000, 10000))
    assert (root / "cat" / "bomb.png").stat().st_size < 100
    refused(
        tool, tmp_path, f"imagefolder:{root}", capsys,
        "bomb.png claims more than", f"images may have at most {MAX_IMAGE_PIXELS} pixels",
    )  # fmt: skip


@TOOL_NAMES
def test_png_in_pillows_warning_range_is_refused_even_when_warnings_are_errors(tool, tmp_path, capsys):
    root = folder_with(tmp_path, "big.png", lambda p: png_header(p, 10000, 10000))  # 100M: Pillow warns, no error
    from PIL.Image import DecompressionBombWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", DecompressionBombWarning)  # as `python -W error`: a traceback if let through
        refused(tool, tmp_path, f"imagefolder:{root}", capsys, "big.png claims more than", "at most 16777216 pixels")


def test_pillows_warning_does_not_reach_stderr_on_the_real_command_line(tmp_path):
    root = folder_with(tmp_path, "big.png", lambda p: png_header(p, 10000, 10000))
    args = argv("train", tmp_path, f"imagefolder:{root}")
    done = subprocess.run(
        [sys.executable, "-m", "robustcnn.train", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "big.png claims more than" in done.stderr and "DecompressionBombWarning" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_image_between_our_cap_and_pillows_is_refused_by_size(tmp_path):
    root = folder_with(tmp_path, "wide.png", lambda p: png_header(p, 5000, 5000))  # 25M: below Pillow's 89M
    with pytest.raises(UsageError, match="wide.png is 5000x5000 = 25000000 pixels; images may have at most 16777216"):
        load_dataset(f"imagefolder:{root}")


def test_the_pixel_cap_is_inclusive(tmp_path):
    """Only headers are read: 4096x4096 opens, one pixel row more does not."""
    with open_image(png_header(tmp_path / "edge.png", 4096, 4096)) as image:
        assert image.size == (4096, 4096)
    with pytest.raises(UsageError, match="4096x4097"), open_image(png_header(tmp_path / "over.png", 4096, 4097)):
        pass


# --- item 11 and the rest: what the folder holds ---------------------------------------------------------------
@TOOL_NAMES
def test_fifo_named_png_is_refused_not_read(tool, tmp_path, capsys):
    root = folder_with(tmp_path, "pipe.png", os.mkfifo)
    refused(
        tool, tmp_path, f"imagefolder:{root}", capsys,
        "pipe.png is a named pipe (FIFO), not a regular file", "only regular image files",
    )  # fmt: skip


def test_fifo_that_appears_after_indexing_is_refused_without_blocking(tmp_path):
    path = tmp_path / "late.png"
    os.mkfifo(path)
    with deadline(HANG_SECONDS), pytest.raises(UsageError, match="late.png is a named pipe"), open_image(path):
        pass


@pytest.fixture
def ghostscript_calls(monkeypatch) -> list[tuple]:
    """Every call Pillow would make to Ghostscript, which is then never run."""
    from PIL import EpsImagePlugin

    calls = []

    def ghostscript(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript must not run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    return calls


@TOOL_NAMES
def test_postscript_named_png_never_reaches_ghostscript(tool, tmp_path, capsys, ghostscript_calls):
    root = folder_with(tmp_path, "eps.png", lambda p: p.write_bytes(EPS_AS_PNG), split=True)
    refused(
        tool, tmp_path, f"imagefolder:{root}", capsys,
        "eps.png: it is not a BMP, JPEG, PNG, PPM, TIFF, WEBP image",
    )  # fmt: skip
    assert ghostscript_calls == []


def test_the_postscript_file_really_would_reach_ghostscript(tmp_path, ghostscript_calls):
    """Without this, 'Ghostscript was never called' would prove nothing."""
    from PIL import Image

    path = tmp_path / "eps.png"
    path.write_bytes(EPS_AS_PNG)
    with pytest.raises(OSError, match="Ghostscript must not run"), Image.open(path) as image:
        image.load()
    assert len(ghostscript_calls) == 1


def test_a_jpeg_named_png_is_still_read(tmp_path):
    from PIL import Image

    root = folder_with(tmp_path, "photo.png", lambda p: Image.new("RGB", (12, 10), "red").save(p, format="JPEG"))
    assert len(load_dataset(f"imagefolder:{root}", "train")) + len(load_dataset(f"imagefolder:{root}")) == 11


def outside_folder(tmp: Path) -> Path:
    """Images beside, not inside, the image folder."""
    return make_image_folder(tmp / "elsewhere", classes=("bird",), per_class=3, split=False) / "bird"


@TOOL_NAMES
def test_class_folder_linked_outside_the_image_folder_is_refused(tool, tmp_path, capsys):
    root = make_image_folder(tmp_path / "images", per_class=5, split=False)
    (root / "bird").symlink_to(outside_folder(tmp_path), target_is_directory=True)
    refused(
        tool, tmp_path, f"imagefolder:{root}", capsys,
        f"bird leads to {tmp_path.resolve() / 'elsewhere' / 'bird'}, outside the image folder",
        "links must stay inside it",
    )  # fmt: skip


@TOOL_NAMES
def test_image_file_linked_outside_the_image_folder_is_refused(tool, tmp_path, capsys):
    target = outside_folder(tmp_path) / "0.png"
    root = folder_with(tmp_path, "borrowed.png", lambda p: p.symlink_to(target))
    refused(tool, tmp_path, f"imagefolder:{root}", capsys, "borrowed.png leads to", "outside the image folder")


def test_links_that_stay_inside_the_image_folder_are_read(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=5, split=False)
    (root / "cat" / "again.png").symlink_to(root / "dog" / "0.png")
    (root / "bird").symlink_to(Path("dog"), target_is_directory=True)  # relative, inside
    data = load_dataset(f"imagefolder:{root}", "train")
    assert data.info.class_names == ("bird", "cat", "dog")


# --- the report's patches: an image opened elsewhere -----------------------------------------------------------
def test_report_patch_of_another_format_is_skipped_without_ghostscript(tmp_path, ghostscript_calls):
    from robustcnn.report.images import patch_uri

    path = tmp_path / "model__patch.png"
    path.write_bytes(EPS_AS_PNG)
    assert patch_uri(path) is None and ghostscript_calls == []
    assert patch_uri(png_header(tmp_path / "bomb.png", 20000, 10000)) is None
