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
  key starting with ``_`` are refused, and so are ``classes_file`` (a file a dataset writes) and
  ``generate`` (a description never makes data);
- every number has a range: integers and floats at most 2**53 in size (floats finite), strings
  at most 4,096 characters without NUL; the keys in ``RANGES`` (image sizes such as
  ``min_size``/``max_size`` up to ``MAX_IMAGE_SIDE`` px, the shapes generator's counts, layer
  widths, proposal and detection counts) within theirs, in any node and in each list element;
  ``iteration`` in [0, 10**12], at most ``MAX_CLASSES`` class names;
- every ``weights`` entry (a pretrained-weight name or path), at any depth, is set to None: the
  checkpoint holds the trained weights, loading it never downloads; ``compile`` is set to False
  (nothing is compiled, no compiler cache written);
- the model is first built without memory (on PyTorch's ``meta`` device): one with more than
  ``MAX_PARAMETERS`` weights, or whose weights do not fit the checkpoint's, is refused before
  any memory is taken;
- describing data is not making it: ``detector.data.ShapesDetection`` stands for
  ``existing_shapes_dataset``, which reads a set that is already there as described and never
  generates, deletes or writes (a missing or different set is one ``DatasetError`` line that
  says how to make it).

The whole description (model and dataset) is checked before anything is built; anything else is
a ``SpecError`` that names the file and the refused key, e.g. ``checkpoint final.pth:
model.backbone._target_ 'os.system' is not a detector constructor``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from detector.checkpoint import load_checkpoint
from detector.data import (
    CocoDetection,
    DatasetError,
    VocDetection,
    build_transforms,
    existing_shapes_dataset,
)
from detector.errors import UserError
from detector.modeling.backbone import ResNet50C4Backbone, VGG16BNBackbone
from detector.modeling.box_head import MLPBoxHead, VGGBoxHead
from detector.modeling.build import build_model
from detector.modeling.pooler import RoIAlign, RoIPool
from detector.modeling.spec_checks import (
    MAX_CLASSES,
    MAX_IMAGE_SIDE,
    RANGES,
    SpecError,
    at,
    check_fields,
    check_spec,
    checked_label_map,
)
from detector.ops import losses

__all__ = ["DATA_CONSTRUCTORS", "MAX_CLASSES", "MAX_IMAGE_SIDE", "MAX_PARAMETERS",
           "MODEL_CONSTRUCTORS", "MOVED_MODULES", "RANGES", "SpecError",
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
# The shapes set is only ever read from a description, never generated (existing_shapes_dataset).
DATA_CONSTRUCTORS: dict[str, Callable] = {
    "detector.data.CocoDetection": CocoDetection,
    "detector.data.ShapesDetection": existing_shapes_dataset,
    "detector.data.VocDetection": VocDetection,
    "detector.data.build_transforms": build_transforms,
}

# keys set when a model is rebuilt: the checkpoint holds the trained weights (never download);
# nothing is compiled (torch.compile writes caches and starts compiler processes)
_REBUILD_VALUES = {"weights": None, "compile": False}
MAX_PARAMETERS = 2**30  # weights of a model a description builds (4 GiB of float32)


def _build(spec: Any, constructors: Mapping[str, Callable], path: str) -> Any:
    if isinstance(spec, Mapping):
        kwargs = {key: _build(value, constructors, at(path, key))
                  for key, value in spec.items() if key != "_target_"}
        if "_target_" not in spec:
            return kwargs
        try:
            return constructors[spec["_target_"]](**kwargs)
        except UserError:  # the constructor's own one line (e.g. DatasetError)
            raise
        except (TypeError, ValueError) as error:  # e.g. an unknown keyword, a value it refuses
            raise SpecError(f"{path} ({spec['_target_']}) cannot be built: {_first(error)}"
                            ) from None
    if isinstance(spec, list | tuple):
        return [_build(value, constructors, at(path, index)) for index, value in enumerate(spec)]
    return spec


def build_from_spec(spec: Any, *, constructors: Mapping[str, Callable] = MODEL_CONSTRUCTORS,
                    path: str = "model") -> Any:
    """Check ``spec`` (``check_spec``), then build it: a mapping with ``_target_`` is called with
    its other entries (each built first), one without becomes a dict of built values."""
    check_spec(spec, constructors=constructors, path=path)
    return _build(spec, constructors, path)


def _for_rebuilding(spec: Any) -> Any:
    """A copy of ``spec`` with every ``weights`` entry, at any depth (lists too), set to None and
    every ``compile`` entry to False (``_REBUILD_VALUES``)."""
    if isinstance(spec, Mapping):
        return {key: _REBUILD_VALUES[key] if key in _REBUILD_VALUES else _for_rebuilding(value)
                for key, value in spec.items()}
    if isinstance(spec, list | tuple):
        return [_for_rebuilding(value) for value in spec]
    return spec


def _first(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


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
        check_fields(state)
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


def _built_model(spec: Mapping, source: str | Path | None, device: str | None = None) -> nn.Module:
    """``spec`` built (on ``device``: ``"meta"`` takes no memory); any constructor's complaint
    is a SpecError naming the checkpoint."""
    try:
        with torch.device(device) if device else contextlib.nullcontext():
            return _build(spec, MODEL_CONSTRUCTORS, "model")
    except Exception as error:  # noqa: BLE001 - any constructor's complaint: a bad description
        raise SpecError(f"{_source(source)}: the model description does not build: "
                        f"{_first(error)}") from error


def _check_size_and_weights(model: nn.Module, state: Mapping, source: str | Path | None,
                            load_weights: bool) -> None:
    """Refuse a model (built on ``meta``) larger than ``MAX_PARAMETERS`` or, with
    ``load_weights``, one whose weights differ in name or shape from the checkpoint's."""
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise SpecError(f"{_source(source)}: its model description builds {count:,} weights "
                        f"(at most {MAX_PARAMETERS:,})")
    if not load_weights:
        return
    weights = state.get("model")
    if not isinstance(weights, Mapping):
        raise SpecError(f"{_source(source)}: it holds no weights ('model' is not a state dict)")
    for name, tensor in model.state_dict().items():
        theirs = weights.get(name)
        if not isinstance(theirs, torch.Tensor) or theirs.shape != tensor.shape:
            raise SpecError(f"{_source(source)}: its weights do not fit its model description: "
                            f"{name} is {_shape(theirs)} there, {tuple(tensor.shape)} here")


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else (
        "missing" if value is None else f"a {type(value).__name__}")


def model_from_checkpoint(state: Mapping, *, source: str | Path | None = None,
                          load_weights: bool = True) -> nn.Module:
    """The ``FasterRCNN`` a checkpoint describes, with its trained weights, in eval mode (CPU).

    Args:
        state: a loaded checkpoint (``read_checkpoint`` or ``load_checkpoint``) holding
            ``config["model"]`` (the model description), ``class_names`` and ``model`` (the
            state dict). It is checked (``check_checkpoint``) before anything is built, and
            built first without memory (on ``meta``).
        source: the checkpoint's path, named in errors.
        load_weights: load ``state["model"]`` (False: fresh weights, e.g. for tests).

    Raises:
        SpecError: a refused checkpoint, or one whose description does not build or whose
            weights do not fit it.
    """
    check_checkpoint(state, source=source)
    spec = {**_for_rebuilding(state["config"]["model"]),
            "num_classes": len(state["class_names"])}
    # first without memory: a huge or misfitting description is refused before any is taken
    _check_size_and_weights(_built_model(spec, source, "meta"), state, source, load_weights)
    model = _built_model(spec, source)
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

    Describing data is not making it: the data must already be where the description says (a
    shapes set is read, never generated: see ``existing_shapes_dataset``); nothing is written
    or deleted.

    Raises:
        SpecError: a refused checkpoint, or no such split described in it.
        DatasetError: the data is missing, different or bad (``checkpoint <source>: ...``, one
            line that says how to make or find it).
        OSError: the data cannot be read.
    """
    check_checkpoint(state, source=source)
    dataset = state["config"].get("dataset", {})
    spec, val = dataset.get(split), dataset.get("val")
    if not isinstance(spec, Mapping) or "_target_" not in spec or not isinstance(val, Mapping):
        raise SpecError(f"{_source(source)}: it describes no dataset.{split} to build")
    spec = {**spec, "transforms": val.get("transforms")}
    try:
        return _build(spec, DATA_CONSTRUCTORS, f"dataset.{split}")
    except DatasetError as error:
        raise DatasetError(f"{_source(source)}: {error}", kind=error.kind) from None
