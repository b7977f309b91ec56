"""Sample images for the demo page: a few pictures from the checkpoint's own validation split."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from detector.modeling.spec import DATA_CONSTRUCTORS, SpecError, build_from_spec

__all__ = ["sample_images"]

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
