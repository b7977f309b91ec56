"""A small trained-model checkpoint, as tools/train_net.py writes it (not a test module).

Test modules import it from the helpers package (``from helpers.tiny_checkpoint import
TINY_CLASSES``); the root conftest's ``tiny_checkpoint`` fixture writes one per session.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CLASSES = ["square", "circle", "triangle", "ellipse"]
TINY_SIZE = 64


def tiny_model_spec(num_classes: int | None = None) -> dict:
    """The plain model description a checkpoint carries (``config["model"]``): a real VGG16-BN
    with a narrow MLP head, sized for 64 px images."""
    spec = {
        "_target_": "detector.modeling.build_model",
        "backbone": {"_target_": "detector.modeling.backbone.VGG16BNBackbone", "weights": None,
                     "frozen_blocks": 0, "norm": "train", "output_stride": 16},
        "box_head": {"_target_": "detector.modeling.box_head.MLPBoxHead", "in_channels": 512,
                     "resolution": 7, "hidden_dim": 32},
        "pooler": {"_target_": "detector.modeling.pooler.RoIPool", "output_size": 7},
        "anchor_sizes": [16, 32, 64], "anchor_ratios": [0.5, 1.0, 2.0], "anchor_offset": 0.5,
        "rpn_pre_nms_top_n": [200, 100], "rpn_post_nms_top_n": [50, 50],
        "roi_num_samples": 32, "score_threshold": 0.05, "max_detections": 20,
    }
    if num_classes is not None:
        spec["num_classes"] = num_classes
    return spec


def write_tiny_checkpoint(path: Path, *, seed: int = 0) -> Path:
    """A ``final.pth`` of a randomly initialised (seeded) model with the shapes classes, plus a
    ``final_metrics.json`` in its run folder. Untrained, its scores sit near 1 / (K + 1)."""
    import json

    from detector.checkpoint import save_checkpoint
    from detector.modeling.spec import build_from_spec

    torch.manual_seed(seed)
    model = build_from_spec(tiny_model_spec(len(TINY_CLASSES))).eval()
    config = {"model": tiny_model_spec(), "dataset": {"name": "shapes", "min_size": TINY_SIZE,
                                                      "max_size": TINY_SIZE}}
    save_checkpoint(path, {"model": model.state_dict(), "config": config,
                           "class_names": TINY_CLASSES, "iteration": 7,
                           "label_to_cat_id": {i + 1: i + 1 for i in range(len(TINY_CLASSES))}})
    metrics = {"AP": 0.25, "AP50": 0.5}
    (path.parent.parent / "final_metrics.json").write_text(json.dumps(metrics))
    return path
