"""Rebuild a trained model from the plain description a checkpoint carries, without Hydra.

A checkpoint written by ``tools/train_net.py`` stores the run's resolved config as plain dicts
(``state["config"]``). Its ``model`` entry is a tree of ``{"_target_": "module.Name", **kwargs}``
nodes, the same one the configs instantiate at training time. ``build_from_spec`` walks such a
tree: every node's ``_target_`` is imported and called with its (already built) keyword
arguments. Only callables under ``detector.`` and ``torchvision.`` are allowed, so a checkpoint
from elsewhere cannot make us import arbitrary code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["ALLOWED_PREFIXES", "SpecError", "build_from_spec", "model_from_checkpoint"]

ALLOWED_PREFIXES = ("detector.", "torchvision.")
# modules that moved; checkpoints written before the move name their old place
MOVED_MODULES = {"detector.losses.": "detector.ops.losses."}
_PRETRAINED_KEYS = ("weights",)  # the checkpoint holds the trained weights: never download


class SpecError(ValueError):
    """The model description in a checkpoint cannot be turned into a model."""


def _import_target(path: str, allowed: tuple[str, ...]) -> Any:
    if not path.startswith(allowed):
        raise SpecError(f"refusing to build {path!r}: only {', '.join(allowed)}* targets")
    for old, new in MOVED_MODULES.items():
        if path.startswith(old):
            path = new + path[len(old):]
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise SpecError(f"cannot import {path!r} named in the checkpoint: {error}") from None


def build_from_spec(spec: Any, *, allowed_prefixes: tuple[str, ...] = ALLOWED_PREFIXES) -> Any:
    """Build the object a spec describes.

    Args:
        spec: a plain value, a list, or a mapping; a mapping with ``_target_`` is called with its
            other entries (each built first), one without is returned as a dict of built values.
        allowed_prefixes: module prefixes a ``_target_`` may come from.
    """
    if isinstance(spec, Mapping):
        kwargs = {k: build_from_spec(v, allowed_prefixes=allowed_prefixes)
                  for k, v in spec.items() if k != "_target_"}
        if "_target_" not in spec:
            return kwargs
        return _import_target(str(spec["_target_"]), tuple(allowed_prefixes))(**kwargs)
    if isinstance(spec, list | tuple):
        return [build_from_spec(v, allowed_prefixes=allowed_prefixes) for v in spec]
    return spec


def _without_pretrained(spec: Mapping) -> dict:
    """A copy of ``spec`` with every ``weights`` entry of a sub-module set to None."""
    out = {}
    for key, value in spec.items():
        if isinstance(value, Mapping):
            value = _without_pretrained(value)
            for name in _PRETRAINED_KEYS:
                if name in value:
                    value[name] = None
        out[key] = value
    return out


def model_from_checkpoint(state: Mapping, *, load_weights: bool = True,
                          allowed_prefixes: tuple[str, ...] = ALLOWED_PREFIXES) -> nn.Module:
    """The ``FasterRCNN`` a checkpoint describes, with its trained weights, in eval mode (CPU).

    Args:
        state: a loaded checkpoint (``detector.checkpoint.load_checkpoint``) holding
            ``config["model"]`` (the model spec), ``class_names`` and ``model`` (state dict).
        load_weights: load ``state["model"]`` (False: fresh weights, e.g. for tests).
        allowed_prefixes: module prefixes the description's ``_target_`` entries may come from.

    Raises:
        SpecError: the checkpoint has no model description, or it cannot be built/loaded.
    """
    config = state.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise SpecError("the checkpoint has no model description (config.model); it was not "
                        "written by tools/train_net.py")
    if "class_names" not in state:
        raise SpecError("the checkpoint has no class_names")
    spec = {**_without_pretrained(config["model"]), "num_classes": len(state["class_names"])}
    model = build_from_spec(spec, allowed_prefixes=allowed_prefixes)
    if load_weights:
        try:
            model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0][:200]
            raise SpecError(f"the checkpoint's weights do not fit its model description: "
                            f"{first}") from None
    return model.eval()
