"""Inference over a loader (original-pixel detections per image) and its COCO evaluation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from detector.data import CocoDetection, build_dataloader, build_transforms
from detector.evaluation.inference import EvaluationStopped, evaluate, predict
from detector.evaluation.sharded import evaluate_sharded
from detector.modeling import build_model
from detector.modeling.box_head import MLPBoxHead
from detector.ops.boxes import xywh_to_xyxy
from detector.runtime import autocast, to_device

# Images (id, height, width) and boxes (image id, category id, xywh) of a tiny COCO set whose
# category ids (5, 17) are not the contiguous labels (1, 2).
IMAGES = [(10, 60, 80), (20, 50, 50), (30, 40, 70)]
BOXES = [(10, 5, (4.0, 6.0, 30.0, 20.0)), (10, 17, (40.0, 10.0, 25.0, 40.0)),
         (20, 17, (10.0, 10.0, 20.0, 30.0))]  # image 30 has no box


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    (root / "val").mkdir()
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images = []
    for image_id, h, w in IMAGES:
        cv2.imwrite(str(root / "val" / f"{image_id}.png"), rng.integers(0, 255, (h, w, 3), np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
    anns = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": list(box),
             "area": box[2] * box[3], "iscrowd": 0} for i, (img, cat, box) in enumerate(BOXES)]
    cats = [{"id": 5, "name": "cat"}, {"id": 17, "name": "dog"}]
    data = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def dataset(coco_root) -> CocoDetection:
    # shorter side 96: every image is enlarged (scales 1.6, 1.92, 2.4), never 1
    return CocoDetection(root=coco_root, split="val",
                         transforms=build_transforms(train=False, min_size=96, max_size=256))


class _TinyBackbone(nn.Module):
    """Two stride-4 convs: stride 16, 8 channels."""

    out_channels, stride = 8, 16

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=4, padding=1), nn.ReLU())

    def forward(self, images):
        return self.body(images)


def _tiny_model(num_classes: int):
    torch.manual_seed(0)
    return build_model(
        backbone=_TinyBackbone(), box_head=MLPBoxHead(in_channels=8, resolution=4, hidden_dim=16),
        pooler=torchvision.ops.RoIAlign(output_size=4, spatial_scale=1 / 16, sampling_ratio=2,
                                        aligned=True),
        num_classes=num_classes, anchor_sizes=(16, 32), rpn_pre_nms_top_n=(100, 50),
        rpn_post_nms_top_n=(20, 10), roi_num_samples=16, score_threshold=0.0)


# ---------------------------------------------------------------------------- helpers
def test_to_device_moves_tensors_and_keeps_other_values():
    batch = {"images": torch.zeros(1, 3, 4, 4, dtype=torch.float64), "name": "x", "n": 3}
    moved = to_device(batch, torch.device("cpu"))
    assert moved.keys() == batch.keys()
    assert moved["images"].device.type == "cpu"
    assert (moved["name"], moved["n"]) == ("x", 3)


def test_autocast_contexts():
    cpu = torch.device("cpu")
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        context = autocast(cpu, "fp16")
    assert any("fp16" in str(w.message) for w in caught)
    with context:
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="precision"):
        autocast(cpu, "fp8")


# ---------------------------------------------------------------------------- predict
def test_predict_one_entry_per_image_in_original_pixels(dataset):
    model = _tiny_model(num_classes=2)
    batches = list(build_dataloader(dataset=dataset, batch_size=2, train=False))
    # anisotropic scales (sy != sx) catch a swapped x/y mapping
    batches[0]["scales"] = torch.tensor([[2.0, 0.5], [1.5, 3.0]])
    model.train()
    detections = predict(model, batches, device=torch.device("cpu"), progress=False)

    assert [d["image_id"] for d in detections] == [10, 20, 30]
    assert model.training  # mode restored
    model.eval()
    expected = []
    with torch.no_grad():
        for batch in batches:
            outputs = model(batch["images"], batch["image_sizes"], detect=True)
            for det, (sy, sx) in zip(model.detect(outputs), batch["scales"].tolist(), strict=True):
                expected.append((det, torch.tensor([sx, sy, sx, sy])))
    for det, (resized, divisor) in zip(detections, expected, strict=True):
        assert set(det) == {"image_id", "boxes", "scores", "labels"}
        assert det["boxes"].device.type == "cpu"
        assert det["boxes"].shape[0] > 0  # score_threshold 0: the test compares real boxes
        assert torch.allclose(det["boxes"], resized["boxes"] / divisor)
        assert torch.equal(det["labels"], resized["labels"])
        assert torch.allclose(det["scores"], resized["scores"])


def test_kept_proposals_are_the_valid_ones_in_original_pixels(dataset):
    model = _tiny_model(num_classes=2).eval()
    batches = list(build_dataloader(dataset=dataset, batch_size=2, train=False))
    batches[0]["scales"] = torch.tensor([[2.0, 0.5], [1.5, 3.0]])
    kept = predict(model, batches, device=torch.device("cpu"), progress=False,
                   keep_proposals=True)
    plain = predict(model, batches, device=torch.device("cpu"), progress=False)
    assert all("proposals" not in d for d in plain)
    with torch.no_grad():
        outputs = model(batches[0]["images"], batches[0]["image_sizes"], detect=True)
    for i, (sy, sx) in enumerate(batches[0]["scales"].tolist()):
        valid = outputs["proposal_valid"][i]
        expected = outputs["proposals"][i][valid] / torch.tensor([sx, sy, sx, sy])
        assert 0 < expected.shape[0] <= 10  # the test-time top-n
        torch.testing.assert_close(kept[i]["proposals"], expected)
        assert torch.equal(kept[i]["boxes"], plain[i]["boxes"])  # detections unchanged


# ---------------------------------------------------------------------------- evaluate
class _GroundTruthModel(nn.Module):
    """Detects exactly the ground truth of each image, in loader order (original pixels)."""

    def __init__(self, dataset: CocoDetection, *, relabel=None) -> None:
        super().__init__()
        self.dataset = dataset
        self.order = iter(dataset.image_ids)
        self.relabel = relabel or (lambda label: label)

    def forward(self, images, image_sizes, targets=None, *, detect=None):
        return {}

    def detect(self, outputs, scales=None):
        out = []
        for _ in range(len(scales)):
            anns = self.dataset.coco.imgToAnns[next(self.order)]
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            labels = [self.relabel(self.dataset.cat_id_to_label[a["category_id"]]) for a in anns]
            out.append({"boxes": xywh_to_xyxy(xywh),
                        "scores": torch.ones(len(anns)),
                        "labels": torch.tensor(labels, dtype=torch.long)})
        return out


def test_evaluate_perfect_detections_give_ap_one(dataset):
    loader = build_dataloader(dataset=dataset, batch_size=2, train=False)
    metrics, detections = evaluate(_GroundTruthModel(dataset), loader,
                                   device=torch.device("cpu"), progress=False)
    assert [d["image_id"] for d in detections] == [10, 20, 30]
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["AP50"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["per_class"] == {"cat": pytest.approx(1.0, abs=1e-9),
                                    "dog": pytest.approx(1.0, abs=1e-9)}
    assert metrics["num_images"] == 3
    assert metrics["num_detections"] == len(BOXES)


def test_evaluate_wrong_classes_give_ap_zero(dataset):
    loader = build_dataloader(dataset=dataset, batch_size=3, train=False)
    model = _GroundTruthModel(dataset, relabel=lambda label: 3 - label)  # cat <-> dog
    metrics, _ = evaluate(model, loader, device=torch.device("cpu"), progress=False)
    assert metrics["AP"] == 0.0


# ---------------------------------------------------------------------------- evaluate_sharded
def test_sharded_evaluation_without_a_process_group_is_evaluate(dataset):
    """One process: the same metrics as ``evaluate``, detections sorted by image id; a stop
    request is ``EvaluationStopped`` counting the images done."""
    loader = build_dataloader(dataset=dataset, batch_size=2, train=False)
    metrics, detections = evaluate_sharded(_GroundTruthModel(dataset), loader,
                                           device=torch.device("cpu"), progress=False)
    single, _ = evaluate(_GroundTruthModel(dataset), loader, device=torch.device("cpu"),
                         progress=False)
    assert metrics == single and metrics["AP"] == pytest.approx(1.0, abs=1e-9)
    assert [d["image_id"] for d in detections] == [10, 20, 30]
    asked = iter([False, True])
    with pytest.raises(EvaluationStopped, match="abandoned after 2 images") as stopped:
        evaluate_sharded(_GroundTruthModel(dataset), loader, device=torch.device("cpu"),
                         progress=False, should_stop=lambda: next(asked))
    assert stopped.value.images_done == 2
