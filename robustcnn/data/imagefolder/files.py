"""Which paths are read, and how an image file is opened: regular files only, links that stay inside the image
folder, the formats the extensions name (EXTENSIONS, FORMATS) and at most MAX_IMAGE_PIXELS pixels."""

from __future__ import annotations

import stat
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from robustcnn.errors import UsageError

if TYPE_CHECKING:
    from PIL import Image

EXTENSIONS = {  # the file extensions read (torchvision's list), each with the Pillow format it names
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".ppm": "PPM", ".pgm": "PPM",
    ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP",
}  # fmt: skip
# Any of them for any extension: a JPEG saved as .png is common and harmless; a format outside this list is not.
FORMATS = tuple(sorted(set(EXTENSIONS.values())))
FILE_KINDS = {  # what a path that is not a regular file is, for the error message
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}
MAX_IMAGE_PIXELS = 1 << 24  # 4096x4096: far above CNN inputs (224x224 is 50176), 48 MiB as RGB; Pillow warns at 89M


def check_inside(path: Path, root: Path) -> None:
    """A link (or a folder reached through one) must lead to a place inside the image folder."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a link loop, before Python 3.13
        raise UsageError(f"cannot read {path}: {error}") from None
    if not target.is_relative_to(root):
        raise UsageError(
            f"{path} leads to {target}, outside the image folder {root}; links must stay inside it "
            "(copy the files in instead)"
        )


def check_file(path: Path, root: Path) -> None:
    """Refuses (rather than skips: that would change the data silently) anything but a regular file inside `root`."""
    check_inside(path, root)
    try:
        mode = path.stat().st_mode  # stat does not open: a named pipe does not block here
    except OSError as error:
        raise UsageError(f"cannot read image {path}: {error.strerror or error}") from None
    _require_regular(path, mode)


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
        raise UsageError(f"{path} is {kind}, not a regular file; an image folder may hold only regular image files")


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """The image, opened as one of FORMATS and at most MAX_IMAGE_PIXELS large. A failure to read it, here or while
    it is decoded in the `with` body, becomes one UsageError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        _require_regular(path, path.stat().st_mode)  # again: the folder may have changed since it was indexed
        with warnings.catch_warnings():
            # Pillow warns above its MAX_IMAGE_PIXELS and refuses above twice that, both above our limit: as an
            # error, its warning refuses the file here instead of printing to stderr. The filter is process-wide
            # while this `with` lasts (until Python 3.14's context-aware warnings); no other thread reads images.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as image:
                _check_pixel_count(path, image.size)
                yield image
    except UsageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UsageError(
            f"image {path} claims more than {Image.MAX_IMAGE_PIXELS} pixels (Pillow's decompression-bomb limit); "
            f"images may have at most {MAX_IMAGE_PIXELS} pixels (4096x4096)"
        ) from None
    except UnidentifiedImageError:
        raise UsageError(f"cannot read image {path}: it is not a {', '.join(FORMATS)} image") from None
    except (OSError, ValueError, EOFError, SyntaxError, IndexError, TypeError, struct.error) as error:
        # what Pillow's plugins raise on a damaged file (OSError also when a header is fine, the pixels truncated)
        raise UsageError(f"cannot read image {path}: {error}") from None


def _check_pixel_count(path: Path, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise UsageError(
            f"image {path} is {width}x{height} = {width * height} pixels; images may have at most "
            f"{MAX_IMAGE_PIXELS} pixels (4096x4096)"
        )
