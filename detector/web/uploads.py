"""Uploaded bytes -> RGB array, refusing non-images and absurd dimensions before decoding.

Accepted: exactly the six formats the error message names (``ACCEPTED_FORMATS``: JPEG, PNG, BMP,
WebP, GIF, TIFF), told by their signature bytes before any decoder sees the data, and read by
Pillow's plugins for those six only: an EPS (which Pillow would hand to Ghostscript), ICO, TGA,
PCX, ... is refused (400) without being parsed.

A small compressed file can declare an enormous image (a "decompression bomb": a 50 kB PNG of
50000 x 50000 pixels decodes to 7.5 GB). The header is read first, without decoding the pixels,
and images above ``max_pixels`` are refused; only then does OpenCV decode the data. The checks
are ``detector.predict.image_files``'s, which ``tools/predict.py`` and the sample images use too.
"""

from __future__ import annotations

import io

import cv2
import numpy as np

from detector.errors import UserError
from detector.predict.image_files import (
    ACCEPTED_FORMATS,
    DEFAULT_MAX_PIXELS,
    ImageRefused,
    check_header,
    sniff_format,
)
from detector.predict.image_files import image_header_size as _header_size

__all__ = ["ACCEPTED_FORMATS", "DEFAULT_MAX_PIXELS", "UploadError", "decode_upload",
           "image_header_size", "sniff_format"]


class UploadError(UserError, ValueError):
    """An upload the demo refuses. ``status`` is the HTTP status to answer with (400 or 413)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _refused(error: ImageRefused) -> UploadError:
    """The shared header check's refusal as the demo's own error (same status)."""
    message = str(error)
    if message.startswith("not an image"):
        message = "the upload is " + message
    return UploadError(message, status=error.status)


def image_header_size(data: bytes) -> tuple[int, int, str]:
    """(width, height, format) from the image header alone; the pixels are not decoded
    (``detector.predict.image_files.image_header_size`` with the six ``ACCEPTED_FORMATS``).

    Raises:
        UploadError (400): not one of the six formats, or its header does not parse.
    """
    try:
        return _header_size(data, ACCEPTED_FORMATS)
    except ImageRefused as error:
        raise _refused(error) from None


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
    try:
        _, _, fmt = check_header(data, max_pixels=max_pixels, formats=ACCEPTED_FORMATS)
    except ImageRefused as error:
        raise _refused(error) from None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF rotation
    if bgr is not None:
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return _decode_with_pillow(data, fmt)


def _decode_with_pillow(data: bytes, fmt: str) -> np.ndarray:
    """Formats OpenCV does not read (some TIFFs), or truncated files."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB")).copy()
    except Exception as error:
        raise UploadError(f"the {fmt} image could not be decoded: {error}") from None
