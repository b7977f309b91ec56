"""Rebuilding a model from a checkpoint's plain description (detector/modeling/spec.py)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from tiny_checkpoint import TINY_CLASSES, tiny_model_spec

from detector.modeling.backbone import VGG16BNBackbone
from detector.modeling.faster_rcnn import FasterRCNN
from detector.modeling.spec import SpecError, build_from_spec, model_from_checkpoint


def test_nested_spec_builds_children_first_and_keeps_plain_values():
    spec = {"_target_": "torchvision.ops.RoIPool", "output_size": [7, 7], "spatial_scale": 0.25}
    pool = build_from_spec(spec)
    assert isinstance(pool, torchvision.ops.RoIPool)
    assert tuple(pool.output_size) == (7, 7) and pool.spatial_scale == 0.25
    plain = build_from_spec({"a": 1, "b": [spec, 2.5]})
    assert plain["a"] == 1 and plain["b"][1] == 2.5
    assert isinstance(plain["b"][0], torchvision.ops.RoIPool)


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run"])
def test_targets_outside_the_allowed_packages_are_refused(target):
    with pytest.raises(SpecError, match="refusing"):
        build_from_spec({"_target_": target, "command": "true"})


def test_unknown_target_is_one_clear_error():
    with pytest.raises(SpecError, match="cannot import 'detector.nowhere.Thing'"):
        build_from_spec({"_target_": "detector.nowhere.Thing"})


def _state(model, **config):
    return {"model": model.state_dict(), "class_names": TINY_CLASSES,
            "config": {"model": tiny_model_spec(), **config}}


def test_model_from_checkpoint_restores_the_same_weights():
    torch.manual_seed(3)
    original = build_from_spec(tiny_model_spec(len(TINY_CLASSES)))
    rebuilt = model_from_checkpoint(_state(original))
    assert isinstance(rebuilt, FasterRCNN) and not rebuilt.training
    assert isinstance(rebuilt.backbone, VGG16BNBackbone)
    assert rebuilt.num_classes == len(TINY_CLASSES)
    for (name, a), (_, b) in zip(original.state_dict().items(), rebuilt.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_pretrained_weight_names_are_never_downloaded(monkeypatch):
    """The checkpoint holds the trained weights: a run trained from IMAGENET1K_V1 must load
    offline (weights=None is what gets built)."""
    seen = []
    real_init = VGG16BNBackbone.__init__

    def spy(self, **kwargs):
        seen.append(kwargs.get("weights"))
        real_init(self, **kwargs)

    monkeypatch.setattr(VGG16BNBackbone, "__init__", spy)
    state = _state(build_from_spec(tiny_model_spec(len(TINY_CLASSES))))
    state["config"]["model"]["backbone"]["weights"] = "IMAGENET1K_V1"
    model_from_checkpoint(state)
    assert seen[-1] is None


def test_checkpoint_without_description_or_with_other_weights_says_so():
    with pytest.raises(SpecError, match="no model description"):
        model_from_checkpoint({"model": {}, "class_names": ["a"]})
    model = build_from_spec(tiny_model_spec(len(TINY_CLASSES) + 1))  # one class too many
    with pytest.raises(SpecError, match="do not fit"):
        model_from_checkpoint(_state(model))
