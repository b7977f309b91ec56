"""Uploaded bytes -> RGB array, refusing non-images and absurd dimensions before decoding.

Accepted: exactly the six formats the error message names (``ACCEPTED_FORMATS``: JPEG, PNG, BMP,
WebP, GIF, TIFF), told by their signature bytes before any decoder sees the data, and read by
Pillow's plugins for those six only: an EPS (which Pillow would hand to Ghostscript), ICO, TGA,
PCX, ... is refused (400) without being parsed.

A small compressed file can declare an enormous image (a "decompression bomb": a 50 kB PNG of
50000 x 50000 pixels decodes to 7.5 GB). The header is read first, without decoding the pixels,
and images above ``max_pixels`` are refused; only then does OpenCV decode the data.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np

from detector.errors import UserError

__all__ = ["ACCEPTED_FORMATS", "DEFAULT_MAX_PIXELS", "UploadError", "decode_upload",
           "image_header_size", "sniff_format"]

DEFAULT_MAX_PIXELS = 40_000_000
# Pillow's format name -> the signatures (leading bytes) that announce it
ACCEPTED_FORMATS: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "BMP": (b"BM",),
    "WEBP": (b"RIFF",),  # + b"WEBP" at offset 8, checked in sniff_format
    "GIF": (b"GIF87a", b"GIF89a"),
    "TIFF": (b"II*\x00", b"MM\x00*"),
}
NOT_AN_IMAGE = "the upload is not an image (expected a JPEG, PNG, BMP, WebP, GIF or TIFF file)"


class UploadError(UserError, ValueError):
    """An upload the demo refuses. ``status`` is the HTTP status to answer with (400 or 413)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def sniff_format(data: bytes) -> str | None:
    """The accepted format whose signature ``data`` starts with (``ACCEPTED_FORMATS``), else
    None."""
    for fmt, signatures in ACCEPTED_FORMATS.items():
        if data.startswith(signatures) and (fmt != "WEBP" or data[8:12] == b"WEBP"):
            return fmt
    return None


def image_header_size(data: bytes) -> tuple[int, int, str]:
    """(width, height, format) from the image header alone; the pixels are not decoded.

    Raises:
        UploadError (400): the bytes do not start with the signature of an accepted format
            (``sniff_format``), or its header does not parse.
    """
    from PIL import Image

    fmt = sniff_format(data)
    if fmt is None:
        raise UploadError(NOT_AN_IMAGE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # lazy: reads the header only; only the plugin of the sniffed format may read it
            with Image.open(io.BytesIO(data), formats=[fmt]) as image:
                width, height = image.size
                return int(width), int(height), str(image.format)
    except Image.DecompressionBombError as error:  # Pillow's own limit, far above ours
        raise UploadError(f"image refused: {error}", status=413) from None
    except Exception:  # Pillow raises many types for garbage input
        raise UploadError(NOT_AN_IMAGE) from None


def decode_upload(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an uploaded image file.

    Args:
        data: the file's bytes.
        max_pixels: the largest width x height accepted.

    Returns:
        ndarray[H, W, 3] uint8, RGB, turned upright by its EXIF orientation (as a browser shows
        it, so that boxes line up with the picture on the page).

    Raises:
        UploadError: empty or not an image (400), too many pixels (413).
    """
    if not data:
        raise UploadError("the upload is empty")
    width, height, fmt = image_header_size(data)
    if width * height > max_pixels:
        raise UploadError(f"image of {width} x {height} pixels refused: more than "
                          f"{max_pixels / 1e6:g} megapixels", status=413)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF rotation
    if bgr is not None:
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return _decode_with_pillow(data, fmt)


def _decode_with_pillow(data: bytes, fmt: str) -> np.ndarray:
    """Formats OpenCV does not read (GIF, some TIFFs), or truncated files."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data), formats=[sniff_format(data)]) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB")).copy()
    except Exception as error:
        raise UploadError(f"the {fmt} image could not be decoded: {error}") from None
