"""The checks a description from a file passes before anything is built from it.

``check_spec`` walks a model or dataset description (see ``detector.modeling.spec``): only plain
data, only the allowed constructors' names, at most 32 levels deep, every number within a range
(``RANGES`` by key; any number at most 2**53 in size, strings at most 4,096 characters).
``check_fields`` checks the checkpoint's other entries that tools read, and
``checked_label_map`` the label -> category id maps of checkpoints and ONNX metadata. Every
refusal is a ``SpecError``: one line naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from detector.data import SHAPES_LIMITS
from detector.errors import UserError

__all__ = ["MAX_CLASSES", "MAX_IMAGE_SIDE", "RANGES", "SpecError", "check_fields", "check_spec",
           "at", "checked_label_map", "shown"]

_REFUSED_KEYS = {"classes_file": "a description may not name a file to write",  # VocDetection's
                 "generate": "a description never generates data"}
_PLAIN = (type(None), bool, int, float, str)
_MAX_DEPTH = 32  # configs nest 3 levels; a hostile file must not exhaust the stack
_MAX_NUMBER = 2**53  # any int or float of a description, in size
_MAX_TEXT = 4096  # characters of any string of a description (a path, a name)
_MAX_ITERATION = 10**12
MAX_IMAGE_SIDE = 4096  # px: the largest resize target (min_size, max_size) a description may ask
MAX_CLASSES = 10_000  # class names a checkpoint may list

# (low, high, integers only) of a key, at any depth of a description (each element of a list);
# None is always allowed (the constructors say where it is not). Image sizes bound the memory of
# predict/eval/export (an image resized to 60,000 px took 10.8 GB), counts the time and disk.
RANGES: dict[str, tuple[float, float, bool]] = {
    **{key: (low, high, True) for key, (low, high) in SHAPES_LIMITS.items()},
    "min_size": (1, MAX_IMAGE_SIDE, True), "max_size": (1, MAX_IMAGE_SIDE, True),
    "min_box_size": (0, MAX_IMAGE_SIDE, False), "num_classes": (1, MAX_CLASSES, True),
    "in_channels": (1, 8192, True), "hidden_dim": (1, 16384, True),
    "rpn_conv_channels": (1, 8192, True), "resolution": (1, 64, True),
    "output_size": (1, 64, True), "output_stride": (1, 64, True),
    "rpn_pre_nms_top_n": (1, 10**6, True), "rpn_post_nms_top_n": (1, 10**6, True),
    "roi_num_samples": (1, 10**6, True), "max_detections": (1, 10**6, True),
    **{key: (0, 1, False) for key in (
        "hflip_prob", "color_jitter", "crop_prob", "min_visibility", "score_threshold",
        "nms_threshold", "rpn_nms_threshold", "roi_fg_iou", "roi_bg_iou_low",
        "roi_positive_fraction", "dropout", "soft_nms_min_score")},
    "soft_nms_sigma": (1e-6, 100, False),
}


class SpecError(UserError, ValueError):
    """The model or dataset description in a checkpoint is refused or cannot be built."""


def shown(value: Any) -> str:
    """``value`` for a one-line message: a plain value's repr (cut), else its type."""
    if _is_int(value) and value.bit_length() > 64:  # repr() refuses ints past 4,300 digits
        return f"an integer of ~{int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, _PLAIN):
        return repr(value)[:80]
    return f"a {type(value).__name__}"


def at(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def _check_plain(value: Any, path: str) -> None:
    """A plain value's own range: numbers at most ``_MAX_NUMBER`` in size (floats finite),
    strings at most ``_MAX_TEXT`` characters without NUL."""
    if _is_int(value) and abs(value) > _MAX_NUMBER:
        raise SpecError(f"{path} {shown(value)} is out of range (at most 2**53 in size)")
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= _MAX_NUMBER):
        raise SpecError(f"{path} {shown(value)} is out of range (a finite number at most "
                        f"2**53 in size)")
    if isinstance(value, str) and (len(value) > _MAX_TEXT or "\x00" in value):
        raise SpecError(f"{path} is not a sane string (at most {_MAX_TEXT} characters, no NUL)")


def _check_range(value: Any, path: str, low: float, high: float, integer: bool,
                 depth: int = 0) -> None:
    """``value`` (None, a number, or a list of them) within [low, high] (``RANGES``)."""
    if isinstance(value, list | tuple) and depth < 2:
        for index, item in enumerate(value):
            _check_range(item, at(path, index), low, high, integer, depth + 1)
        return
    number = _is_int(value) or (isinstance(value, float) and not integer)
    if value is not None and not (number and low <= value <= high):
        kind = "an integer" if integer else "a number"
        raise SpecError(f"{path} must be {kind} in [{low}, {high}], got {shown(value)}")


def check_spec(spec: Any, *, constructors: Mapping[str, Callable], path: str,
               depth: int = 0) -> None:
    """Refuse anything but plain data in range and the ``constructors``' names in a description.

    Args:
        spec: the description (a plain value, a list, or a dict; ``_target_`` nodes are dicts).
        constructors: the names a ``_target_`` may take.
        path: where ``spec`` sits (e.g. ``model``), for the message.
        depth: how deep ``spec`` sits; at ``_MAX_DEPTH`` levels below the top a list or dict is
            refused (so 32 nested levels are fine, 33 are not).

    Raises:
        SpecError: naming the first refused key or value by its path.
    """
    if isinstance(spec, _PLAIN):
        _check_plain(spec, path)
        return
    if depth >= _MAX_DEPTH:
        raise SpecError(f"{path} is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(spec, list | tuple):
        for index, value in enumerate(spec):
            check_spec(value, constructors=constructors, path=at(path, index), depth=depth + 1)
        return
    if not isinstance(spec, Mapping):
        raise SpecError(f"{path} is a {type(spec).__name__}: a description holds only plain "
                        f"data (numbers, strings, lists, dicts)")
    for key, value in spec.items():
        if not isinstance(key, str):
            raise SpecError(f"{path} has a key {shown(key)}: keys are strings")
        if len(key) > 100 or not key.isprintable():
            raise SpecError(f"{path} has a key {shown(key)}: keys are short printable names")
        where = at(path, key)
        if key == "_target_":
            if not isinstance(value, str) or value not in constructors:
                raise SpecError(f"{where} {shown(value)} is not a detector constructor")
        elif key.startswith("_"):
            raise SpecError(f"{where}: the key {shown(key)} is not allowed in a description "
                            f"(only _target_ is)")
        elif key in _REFUSED_KEYS:
            raise SpecError(f"{where}: {_REFUSED_KEYS[key]}")
        else:
            check_spec(value, constructors=constructors, path=where, depth=depth + 1)
            if key in RANGES:
                _check_range(value, where, *RANGES[key])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_MAX_ID_DIGITS = 9  # category ids and labels fit an int32: a 4,301-digit "id" is refused


def _as_id(value: Any) -> int | None:
    """``value`` as a non-negative id: an int, or a string of 1-9 ASCII digits; else None."""
    if _is_int(value):
        return value if 0 <= value < 10**_MAX_ID_DIGITS else None
    if (isinstance(value, str) and 0 < len(value) <= _MAX_ID_DIGITS and value.isascii()
            and value.isdigit()):
        return int(value)
    return None


def checked_label_map(value: Any, *, path: str) -> dict[int, int]:
    """A label -> category id map from a file (checkpoint, ONNX metadata), checked and converted:
    keys are ints or strings of 1-9 ASCII digits (JSON keys are strings), values ints in
    0 <= id < 10**9; "\u00b2" (which ``str.isdigit`` accepts but ``int`` refuses) or a 4,301-digit
    number is refused here, before anything uses it.

    Raises:
        SpecError: ``<path> ...``, one line naming the first bad entry.
    """
    if not isinstance(value, Mapping):
        raise SpecError(f"{path} must map labels to integer category ids, got {shown(value)}")
    checked = {}
    for key, cat_id in value.items():
        label, converted = _as_id(key), _as_id(cat_id)
        if label is None or converted is None:
            raise SpecError(f"{path} must map labels to integer category ids (at most "
                            f"{_MAX_ID_DIGITS} digits), got {shown(key)}: {shown(cat_id)}")
        checked[label] = converted
    return checked


def check_fields(state: Any) -> None:
    """The entries besides the descriptions that tools read: types and values."""
    if not isinstance(state, Mapping):
        raise SpecError(f"it holds a {type(state).__name__}, not a dict")
    config = state.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise SpecError("it has no model description (config.model); it was not written by "
                        "tools/train_net.py")
    names = state.get("class_names")
    if (not isinstance(names, list | tuple) or not 0 < len(names) <= MAX_CLASSES
            or not all(isinstance(name, str) and len(name) <= _MAX_TEXT for name in names)):
        raise SpecError(f"class_names must be a non-empty list of at most {MAX_CLASSES} strings")
    checked_label_map(state.get("label_to_cat_id", {}), path="label_to_cat_id")
    iteration = state.get("iteration")
    if not (iteration is None or (_is_int(iteration) and 0 <= iteration <= _MAX_ITERATION)):
        raise SpecError(f"iteration must be an integer in [0, 10**12], got {shown(iteration)}")
    if not (config.get("name") is None or (isinstance(config["name"], str)
                                           and len(config["name"]) <= _MAX_TEXT)):
        raise SpecError("config.name must be a string")
    dataset = config.get("dataset", {})
    if not isinstance(dataset, Mapping):
        raise SpecError("config.dataset must be a dict")
    for key in ("min_size", "max_size"):
        value = dataset.get(key, 1)
        if not (_is_int(value) and 0 < value <= MAX_IMAGE_SIDE) and not (
                key == "min_size" and value is None):
            raise SpecError(f"dataset.{key} must be a positive integer of at most "
                            f"{MAX_IMAGE_SIDE} (pixels), got {shown(value)}")
