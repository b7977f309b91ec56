"""Sample images for the demo page: a few pictures from the checkpoint's own validation split.

A checkpoint's dataset description names its files, and a checkpoint may come from anyone: a
"sample" may be an HTML page, an SVG with scripts or any readable file. So a sample is never
served as its own bytes: ``encode_sample`` reads it as an image (signature and header checked,
``detector.predict.image_files``), decodes it and encodes the pixels again, as a PNG (a JPEG for
JPEG files); whatever is no image is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import cv2

from detector.modeling.spec import DATA_CONSTRUCTORS, SpecError, build_from_spec
from detector.predict.image_files import (
    DEFAULT_MAX_PIXELS,
    MAX_IMAGE_BYTES,
    decode_image_bytes,
    read_image_bytes,
)

__all__ = ["encode_sample", "sample_images"]

log = logging.getLogger(__name__)


def sample_images(dataset_config: Mapping | None, *, count: int = 6,
                  split: str = "val") -> list[Path]:
    """Up to ``count`` image files of a run's ``split``, spread over the split, images with
    objects first.

    Args:
        dataset_config: the ``config["dataset"]`` a checkpoint carries; its ``split`` entry is
            a ``{"_target_": "detector.data....", ...}`` description of the dataset (the generated
            shapes set is regenerated when absent), built only through the project's dataset
            constructors (``detector.modeling.spec.DATA_CONSTRUCTORS``; anything else is refused
            and logged, never built).

    Returns:
        Paths of existing files; empty (with a log line) when the data cannot be found.
    """
    spec = (dataset_config or {}).get(split)
    if not isinstance(spec, Mapping) or count <= 0:
        return []
    try:
        dataset = build_from_spec(spec, constructors=DATA_CONSTRUCTORS, path=f"dataset.{split}")
        records = list(dataset.records)
    except (SpecError, OSError, ValueError, TypeError) as error:  # DatasetError is a ValueError
        log.warning("no sample images: the %s split could not be loaded (%s)", split,
                    str(error).splitlines()[0] if str(error) else type(error).__name__)
        return []
    with_objects = [r for r in records if len(r.boxes)] or records
    step = max(1, len(with_objects) // count)
    return [r.path for r in with_objects[::step][:count] if Path(r.path).is_file()]


def encode_sample(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_bytes: int = MAX_IMAGE_BYTES) -> tuple[bytes, str]:
    """(bytes, content type) of a sample image re-encoded by the server: its pixels (decoded
    as ``Predictor`` reads files) as a PNG, or a JPEG (quality 95) for a JPEG file; never the
    file's own bytes.

    Raises:
        DatasetError: the file is missing, too large, not an image, or has more than
            ``max_pixels`` pixels (read from its header, before decoding).
    """
    data, fmt = read_image_bytes(path, max_pixels=max_pixels, max_bytes=max_bytes)
    rgb = decode_image_bytes(data, source=str(path))
    suffix, mimetype = (".jpg", "image/jpeg") if fmt == "JPEG" else (".png", "image/png")
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "JPEG" else []
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB array
        raise OSError(f"OpenCV could not encode sample {path}")
    return encoded.tobytes(), mimetype
