"""Image bytes and files read with limits: the format told by its signature bytes, the size read
from the header before any pixel is decoded, files over a size limit never read.

A small compressed file can declare an enormous image (a "decompression bomb": a 48 kB PNG of
20000 x 20000 pixels decodes to 1.2 GB, and prediction's float copies make it several GB). So the
header is read first (Pillow, without decoding the pixels, and only with the plugin of the format
the signature names) and an image above ``max_pixels`` is refused; only then does OpenCV decode.
The web demo's uploads (``detector.web.uploads``), its sample images and ``Predictor``'s image
files all go through ``check_header``.

    >>> rgb = read_image_file("photo.jpg")        # ndarray[H, W, 3] uint8, or DatasetError
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path

import cv2
import numpy as np

from detector.data.image_io import to_rgb_uint8
from detector.data.report import DatasetError
from detector.errors import UserError
from detector.fileio import open_for_reading

__all__ = ["ACCEPTED_FORMATS", "DEFAULT_MAX_PIXELS", "FILE_FORMATS", "MAX_IMAGE_BYTES",
           "ImageRefused", "check_header", "decode_image_bytes", "image_header_size",
           "read_image_bytes", "read_image_file", "sniff_format"]

DEFAULT_MAX_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 256 * 2**20  # a 40-megapixel 16-bit RGB TIFF (240 MB) fits; 2 GiB is refused
# Pillow's format name -> the signatures (leading bytes) that announce it: what uploads accept
ACCEPTED_FORMATS: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "BMP": (b"BM",),
    "WEBP": (b"RIFF",),  # + b"WEBP" at offset 8, checked in sniff_format
    "GIF": (b"GIF87a", b"GIF89a"),
    "TIFF": (b"II*\x00", b"MM\x00*"),
}
# image files (tools/predict.py's .ppm/.pgm as well): the six plus Netpbm
FILE_FORMATS = {**ACCEPTED_FORMATS, "PPM": (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")}
_SHOWN = {"WEBP": "WebP", "PPM": "PPM/PGM/PBM"}


class ImageRefused(UserError, ValueError):
    """Bytes that are not an image of an accepted format (``status`` 400), or that declare more
    pixels than allowed (``status`` 413, the HTTP status the web demo answers with)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def expected_formats(formats: dict[str, tuple[bytes, ...]]) -> str:
    """``"JPEG, PNG, BMP, WebP, GIF or TIFF"`` for the names of ``formats``."""
    names = [_SHOWN.get(name, name) for name in formats]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def sniff_format(data: bytes, formats: dict[str, tuple[bytes, ...]] = ACCEPTED_FORMATS
                 ) -> str | None:
    """The format of ``formats`` whose signature ``data`` starts with, else None (a RIFF file
    is WebP only with ``WEBP`` at offset 8: an AVI or WAV is none)."""
    for fmt, signatures in formats.items():
        if data.startswith(signatures) and (fmt != "WEBP" or data[8:12] == b"WEBP"):
            return fmt
    return None


def image_header_size(data: bytes, formats: dict[str, tuple[bytes, ...]] = ACCEPTED_FORMATS
                      ) -> tuple[int, int, str]:
    """(width, height, format) from the image header alone; the pixels are not decoded.

    Raises:
        ImageRefused (400): the bytes do not start with the signature of one of ``formats``
            (``sniff_format``), or its header does not parse.
    """
    from PIL import Image

    fmt = sniff_format(data, formats)
    refused = f"not an image (expected a {expected_formats(formats)} file)"
    if fmt is None:
        raise ImageRefused(refused)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # lazy: reads the header only; only the plugin of the sniffed format may read it
            with Image.open(io.BytesIO(data), formats=[fmt]) as image:
                width, height = image.size
                return int(width), int(height), str(image.format)
    except Image.DecompressionBombError as error:  # Pillow's own limit, far above ours
        raise ImageRefused(f"image refused: {error}", status=413) from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for garbage input
        raise ImageRefused(refused) from None


def check_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: dict[str, tuple[bytes, ...]] = ACCEPTED_FORMATS) -> tuple[int, int, str]:
    """``image_header_size``, refusing an image of more than ``max_pixels`` (inclusive limit).

    Raises:
        ImageRefused: not an image (400), too many pixels (413).
    """
    if not data:
        raise ImageRefused("the file is empty")
    width, height, fmt = image_header_size(data, formats)
    if width * height > max_pixels:
        raise ImageRefused(f"image of {width} x {height} pixels refused: more than "
                           f"{max_pixels / 1e6:g} megapixels", status=413)
    return width, height, fmt


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size} bytes"


def _opened(path: Path) -> int:
    """A read-only descriptor of ``path`` (non-blocking: a FIFO does not wait for a writer)."""
    try:
        return open_for_reading(path)
    except FileNotFoundError:
        raise DatasetError(f"image file {path} does not exist", kind="missing_image") from None
    except OSError as error:
        raise DatasetError(f"image file {path} cannot be read: {error.strerror or error}",
                           kind="unreadable_image") from error


def read_image_bytes(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     max_bytes: int = MAX_IMAGE_BYTES,
                     formats: dict[str, tuple[bytes, ...]] = FILE_FORMATS) -> tuple[bytes, str]:
    """The bytes and format of an image file whose header passed ``check_header``; a file that
    is no regular file, or larger than ``max_bytes``, is not read at all.

    Raises:
        DatasetError: naming the file and why (missing, not a regular file, too large, not an
            image of ``formats``, too many pixels).
    """
    path = Path(path)
    with os.fdopen(_opened(path), "rb") as file:
        info = os.fstat(file.fileno())
        mode, size = info.st_mode, info.st_size
        if not stat.S_ISREG(mode):
            cause = (IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
                     if stat.S_ISDIR(mode) else None)
            raise DatasetError(f"image file {path} is not a regular file",
                               kind="unreadable_image") from cause
        data = file.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise DatasetError(f"image file {path} is {_mib(max(size, len(data)))}, more than the "
                           f"{_mib(max_bytes)} an image may have: not read",
                           kind="unreadable_image")
    try:
        _, _, fmt = check_header(data, max_pixels=max_pixels, formats=formats)
    except ImageRefused as error:
        raise DatasetError(f"image file {path}: {error}", kind="unreadable_image") from None
    return data, fmt


def decode_image_bytes(data: bytes, *, source: str = "image") -> np.ndarray:
    """Decode checked bytes (``read_image_bytes``) as the project's image reader does
    (``detector.data.image_io``: OpenCV, EXIF orientation not applied, grayscale, alpha and
    16 bits turned into RGB uint8 ``[H, W, 3]``).

    Raises:
        DatasetError: OpenCV cannot decode them (naming ``source``).
    """
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        first = (str(error).strip().splitlines() or [""])[-1][:120]
        raise DatasetError(f"image file {source} cannot be decoded: {first}",
                           kind="unreadable_image") from None
    if image is None:
        raise DatasetError(f"image file {source} is corrupt or not an image ({len(data)} bytes)",
                           kind="unreadable_image")
    return to_rgb_uint8(image, source=str(source))


def read_image_file(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_bytes: int = MAX_IMAGE_BYTES) -> np.ndarray:
    """An image file as RGB uint8 ``[H, W, 3]``, within the limits (``read_image_bytes``).

    Raises:
        DatasetError: naming the file and why it was not read or decoded.
    """
    data, _ = read_image_bytes(path, max_pixels=max_pixels, max_bytes=max_bytes)
    return decode_image_bytes(data, source=str(path))
