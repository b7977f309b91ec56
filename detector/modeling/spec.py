"""Rebuild a trained model, and its validation set, from the plain description a checkpoint carries.

A checkpoint written by ``tools/train_net.py`` stores the run's resolved config as plain dicts
(``state["config"]``). Its ``model`` entry is a tree of ``{"_target_": "module.Name", **kwargs}``
nodes, the same one the configs instantiate at training time; ``dataset.train``/``dataset.val``
describe the data the same way.

A checkpoint is data, never code: it may come from a colleague, a model zoo or a download. So
this is the one route from a checkpoint to a model or a dataset, for every tool, and it only ever
calls the project's own constructors:

- a ``_target_`` must be one of the names in ``MODEL_CONSTRUCTORS`` (model descriptions) or
  ``DATA_CONSTRUCTORS`` (dataset descriptions), exactly; nothing is imported by name;
- every other value is plain data: None, bool, int, float, str, lists and dicts with string keys
  (no tensors, no other objects); Hydra's other keys (``_partial_``, ``_args_``, ...) and any
  key starting with ``_`` are refused, and so is ``classes_file`` (a file a dataset writes);
- every ``weights`` entry (a pretrained-weight name or path), at any depth, is set to None: the
  checkpoint holds the trained weights, loading it never downloads.

The whole description (model and dataset) is checked before anything is built; anything else is
a ``SpecError`` that names the file and the refused key, e.g. ``checkpoint final.pth:
model.backbone._target_ 'os.system' is not a detector constructor``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torchvision
from torch import nn

from detector.checkpoint import load_checkpoint
from detector.data import CocoDetection, ShapesDetection, VocDetection, build_transforms
from detector.errors import UserError
from detector.modeling.backbone import ResNet50C4Backbone, VGG16BNBackbone
from detector.modeling.box_head import MLPBoxHead, VGGBoxHead
from detector.modeling.build import build_model
from detector.modeling.pooler import RoIAlign, RoIPool
from detector.ops import losses

__all__ = ["DATA_CONSTRUCTORS", "MODEL_CONSTRUCTORS", "MOVED_MODULES", "SpecError",
           "build_from_spec", "check_checkpoint", "check_spec", "checked_label_map", "dataset_from_checkpoint",
           "model_from_checkpoint", "read_checkpoint"]

# modules that moved; checkpoints written before the move name their old place
MOVED_MODULES = {"detector.losses.": "detector.ops.losses."}


def _with_old_names(table: dict[str, Callable]) -> dict[str, Callable]:
    """``table`` plus the names its entries had before their module moved (``MOVED_MODULES``)."""
    old = {before + name[len(after):]: constructor for name, constructor in table.items()
           for before, after in MOVED_MODULES.items() if name.startswith(after)}
    return {**table, **old}


# Every constructor a checkpoint's model description may name, by the name configs/ use.
MODEL_CONSTRUCTORS: dict[str, Callable] = _with_old_names({
    "detector.modeling.build_model": build_model,
    "detector.modeling.backbone.VGG16BNBackbone": VGG16BNBackbone,
    "detector.modeling.backbone.ResNet50C4Backbone": ResNet50C4Backbone,
    "detector.modeling.box_head.MLPBoxHead": MLPBoxHead,
    "detector.modeling.box_head.VGGBoxHead": VGGBoxHead,
    "detector.modeling.pooler.RoIAlign": RoIAlign,
    "detector.modeling.pooler.RoIPool": RoIPool,
    "torchvision.ops.RoIPool": torchvision.ops.RoIPool,
    "torchvision.ops.RoIAlign": torchvision.ops.RoIAlign,
    "detector.ops.losses.BinaryCrossEntropy": losses.BinaryCrossEntropy,
    "detector.ops.losses.CrossEntropy": losses.CrossEntropy,
    "detector.ops.losses.SigmoidFocalLoss": losses.SigmoidFocalLoss,
    "detector.ops.losses.SoftmaxFocalLoss": losses.SoftmaxFocalLoss,
})

# Every constructor a checkpoint's dataset description (dataset.train / dataset.val) may name.
DATA_CONSTRUCTORS: dict[str, Callable] = {
    "detector.data.CocoDetection": CocoDetection,
    "detector.data.ShapesDetection": ShapesDetection,
    "detector.data.VocDetection": VocDetection,
    "detector.data.build_transforms": build_transforms,
}

_PRETRAINED_KEYS = ("weights",)  # the checkpoint holds the trained weights: never download
_WRITING_KEYS = ("classes_file",)  # VocDetection writes its class list there
_PLAIN = (type(None), bool, int, float, str)
_MAX_DEPTH = 32  # configs nest 3 levels; a hostile file must not exhaust the stack


class SpecError(UserError, ValueError):
    """The model or dataset description in a checkpoint is refused or cannot be built."""


def _shown(value: Any) -> str:
    """``value`` for a one-line message: a plain value's repr (cut), else its type."""
    if _is_int(value) and value.bit_length() > 64:  # repr() refuses ints past 4,300 digits
        return f"an integer of ~{int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, _PLAIN):
        return repr(value)[:80]
    return f"a {type(value).__name__}"


def _at(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def check_spec(spec: Any, *, constructors: Mapping[str, Callable], path: str,
               depth: int = 0) -> None:
    """Refuse anything but plain data and the ``constructors``' names in a description.

    Args:
        spec: the description (a plain value, a list, or a dict; ``_target_`` nodes are dicts).
        constructors: the names a ``_target_`` may take.
        path: where ``spec`` sits (e.g. ``model``), for the message.
        depth: how deep ``spec`` sits; deeper than ``_MAX_DEPTH`` is refused.

    Raises:
        SpecError: naming the first refused key or value by its path.
    """
    if isinstance(spec, _PLAIN):
        return
    if depth >= _MAX_DEPTH:
        raise SpecError(f"{path} is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(spec, list | tuple):
        for index, value in enumerate(spec):
            check_spec(value, constructors=constructors, path=_at(path, index), depth=depth + 1)
        return
    if not isinstance(spec, Mapping):
        raise SpecError(f"{path} is a {type(spec).__name__}: a description holds only plain "
                        f"data (numbers, strings, lists, dicts)")
    for key, value in spec.items():
        if not isinstance(key, str):
            raise SpecError(f"{path} has a key {_shown(key)}: keys are strings")
        where = _at(path, key)
        if key == "_target_":
            if not isinstance(value, str) or value not in constructors:
                raise SpecError(f"{where} {_shown(value)} is not a detector constructor")
        elif key.startswith("_"):
            raise SpecError(f"{where}: the key {key!r} is not allowed in a description "
                            f"(only _target_ is)")
        elif key in _WRITING_KEYS:
            raise SpecError(f"{where}: a description may not name a file to write")
        else:
            check_spec(value, constructors=constructors, path=where, depth=depth + 1)


def _build(spec: Any, constructors: Mapping[str, Callable], path: str) -> Any:
    if isinstance(spec, Mapping):
        kwargs = {key: _build(value, constructors, _at(path, key))
                  for key, value in spec.items() if key != "_target_"}
        if "_target_" not in spec:
            return kwargs
        try:
            return constructors[spec["_target_"]](**kwargs)
        except TypeError as error:  # e.g. an unknown keyword: the description does not fit
            raise SpecError(f"{path} ({spec['_target_']}) cannot be built: {_first(error)}"
                            ) from None
    if isinstance(spec, list | tuple):
        return [_build(value, constructors, _at(path, index)) for index, value in enumerate(spec)]
    return spec


def build_from_spec(spec: Any, *, constructors: Mapping[str, Callable] = MODEL_CONSTRUCTORS,
                    path: str = "model") -> Any:
    """Check ``spec`` (``check_spec``), then build it: a mapping with ``_target_`` is called with
    its other entries (each built first), one without becomes a dict of built values."""
    check_spec(spec, constructors=constructors, path=path)
    return _build(spec, constructors, path)


def _without_pretrained(spec: Any) -> Any:
    """A copy of ``spec`` with every ``weights`` entry, at any depth (lists too), set to None."""
    if isinstance(spec, Mapping):
        return {key: None if key in _PRETRAINED_KEYS else _without_pretrained(value)
                for key, value in spec.items()}
    if isinstance(spec, list | tuple):
        return [_without_pretrained(value) for value in spec]
    return spec


def _first(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


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
        raise SpecError(f"{path} must map labels to integer category ids, got {_shown(value)}")
    checked = {}
    for key, cat_id in value.items():
        label, converted = _as_id(key), _as_id(cat_id)
        if label is None or converted is None:
            raise SpecError(f"{path} must map labels to integer category ids (at most "
                            f"{_MAX_ID_DIGITS} digits), got {_shown(key)}: {_shown(cat_id)}")
        checked[label] = converted
    return checked


def _check_fields(state: Any) -> None:
    """The entries besides the descriptions that tools read: types and values."""
    if not isinstance(state, Mapping):
        raise SpecError(f"it holds a {type(state).__name__}, not a dict")
    config = state.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise SpecError("it has no model description (config.model); it was not written by "
                        "tools/train_net.py")
    names = state.get("class_names")
    if (not isinstance(names, list | tuple) or not names
            or not all(isinstance(name, str) for name in names)):
        raise SpecError("class_names must be a non-empty list of strings")
    checked_label_map(state.get("label_to_cat_id", {}), path="label_to_cat_id")
    if not (state.get("iteration") is None or _is_int(state["iteration"])):
        raise SpecError("iteration must be an integer")
    if not isinstance(config.get("name"), str | type(None)):
        raise SpecError("config.name must be a string")
    dataset = config.get("dataset", {})
    if not isinstance(dataset, Mapping):
        raise SpecError("config.dataset must be a dict")
    for key in ("min_size", "max_size"):
        value = dataset.get(key, 1)
        if not (_is_int(value) and value > 0) and not (key == "min_size" and value is None):
            raise SpecError(f"dataset.{key} must be a positive integer, got {_shown(value)}")


def _source(source: str | Path | None) -> str:
    return f"checkpoint {source}" if source is not None else "the checkpoint"


def check_checkpoint(state: Any, *, source: str | Path | None = None) -> None:
    """Refuse a checkpoint whose model or dataset description, or whose ``class_names``,
    ``label_to_cat_id``, ``iteration``, ``dataset.min_size``/``max_size`` are not what
    ``tools/train_net.py`` writes (see the module docstring). Nothing is built.

    Raises:
        SpecError: ``checkpoint <source>: <what is refused>``, one line.
    """
    try:
        _check_fields(state)
        check_spec(state["config"]["model"], constructors=MODEL_CONSTRUCTORS, path="model")
        check_spec(state["config"].get("dataset", {}), constructors=DATA_CONSTRUCTORS,
                   path="dataset")
    except SpecError as error:
        raise SpecError(f"{_source(source)}: {error}") from None


def read_checkpoint(path: str | Path) -> dict:
    """``load_checkpoint(path)`` (tensors and plain values only), then ``check_checkpoint``.

    Raises:
        FileNotFoundError, CheckpointError: as ``load_checkpoint``. SpecError: a refused checkpoint.
    """
    state = load_checkpoint(path)
    check_checkpoint(state, source=path)
    return state


def model_from_checkpoint(state: Mapping, *, source: str | Path | None = None,
                          load_weights: bool = True) -> nn.Module:
    """The ``FasterRCNN`` a checkpoint describes, with its trained weights, in eval mode (CPU).

    Args:
        state: a loaded checkpoint (``read_checkpoint`` or ``load_checkpoint``) holding
            ``config["model"]`` (the model description), ``class_names`` and ``model`` (the
            state dict). It is checked (``check_checkpoint``) before anything is built.
        source: the checkpoint's path, named in errors.
        load_weights: load ``state["model"]`` (False: fresh weights, e.g. for tests).

    Raises:
        SpecError: a refused checkpoint, or one whose description does not build or whose
            weights do not fit it.
    """
    check_checkpoint(state, source=source)
    spec = {**_without_pretrained(state["config"]["model"]),
            "num_classes": len(state["class_names"])}
    try:
        model = _build(spec, MODEL_CONSTRUCTORS, "model")
    except Exception as error:  # noqa: BLE001 - any constructor's complaint: a bad description
        raise SpecError(f"{_source(source)}: the model description does not build: "
                        f"{_first(error)}") from error
    if load_weights:
        try:
            model.load_state_dict(state["model"])
        except (KeyError, RuntimeError, TypeError, AttributeError) as error:
            raise SpecError(f"{_source(source)}: its weights do not fit its model description: "
                            f"{_first(error)}") from None
    return model.eval()


def dataset_from_checkpoint(state: Mapping, *, split: str = "val",
                            source: str | Path | None = None):
    """The checkpoint's ``split`` dataset (``config["dataset"][split]``) with the evaluation
    transforms of ``dataset.val`` (never augmented), built through ``DATA_CONSTRUCTORS``.

    Raises:
        SpecError: a refused checkpoint, or no such split described in it.
        DatasetError, OSError: the data itself is missing or bad (the dataset's own errors).
    """
    check_checkpoint(state, source=source)
    dataset = state["config"].get("dataset", {})
    spec, val = dataset.get(split), dataset.get("val")
    if not isinstance(spec, Mapping) or "_target_" not in spec or not isinstance(val, Mapping):
        raise SpecError(f"{_source(source)}: it describes no dataset.{split} to build")
    spec = {**spec, "transforms": val.get("transforms")}
    return _build(spec, DATA_CONSTRUCTORS, f"dataset.{split}")
