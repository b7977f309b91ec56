"""Reading images with OpenCV into 3-channel RGB uint8 arrays, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from detector.data.report import DatasetError

_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}


def to_rgb_uint8(image: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Turn an OpenCV-decoded array into RGB uint8.

    Args:
        image (ndarray[H, W] | ndarray[H, W, C]): as `cv2.imdecode(..., IMREAD_UNCHANGED)`
            returns it: grayscale, BGR or BGRA; uint8 or uint16.
        source: name of the file, for error messages.

    Returns:
        ndarray[H, W, 3] uint8, RGB. Alpha is dropped; grayscale is replicated.
    """
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DatasetError(f"{source}: unsupported pixel type {image.dtype}",
                           kind="unreadable_image")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in _TO_RGB:
        raise DatasetError(f"{source}: unsupported number of channels {channels}",
                           kind="unreadable_image")
    if image.ndim == 3 and channels == 1:
        image = image[:, :, 0]
    return np.ascontiguousarray(cv2.cvtColor(image, _TO_RGB[channels]))


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB.

    The EXIF orientation is *not* applied, so the array matches the stored pixel grid that
    annotation tools and the COCO ``width``/``height`` fields describe.

    Returns:
        ndarray[H, W, 3] uint8, RGB.

    Raises:
        DatasetError: the file is missing, unreadable, or not a decodable image.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"image file {path} does not exist", kind="missing_image") from None
    except OSError as err:
        raise DatasetError(f"image file {path} cannot be read: {err}",
                           kind="unreadable_image") from err
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DatasetError(f"image file {path} is corrupt or not an image ({data.size} bytes)",
                           kind="unreadable_image")
    return to_rgb_uint8(image, source=str(path))
