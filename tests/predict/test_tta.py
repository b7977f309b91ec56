"""Test-time augmentation by horizontal flip (detector/modeling/tta.py, ``Predictor(tta=True)``,
``tta=`` of tools/eval.py and tools/predict.py): the un-flip, the per-image mirror of a padded
batch, the merge before the final NMS, and the configs that cannot do it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers.run_tool import run_tool
from helpers.tiny_checkpoint import TINY_CLASSES, TINY_SIZE
from hydra import compose, initialize_config_dir

from detector.data import ShapesDetection, build_dataloader, build_transforms
from detector.evaluation.inference import predict
from detector.modeling.postprocess import DetectionPostprocessor
from detector.modeling.tta import flip_images, forward_with_flip, merge_flipped, unflip_boxes
from detector.ops.boxes import BoxCoder
from detector.predict.predictor import Predictor
from detector_cli import checks

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def test_unflip_boxes_mirrors_each_image_within_its_own_width():
    boxes = torch.tensor([[[10.0, 5.0, 30.0, 25.0]], [[0.0, 1.0, 50.0, 2.0]]])
    out = unflip_boxes(boxes, torch.tensor([100, 50]))
    assert out.tolist() == [[[70.0, 5.0, 90.0, 25.0]], [[0.0, 1.0, 50.0, 2.0]]]


def test_flip_images_mirrors_within_the_width_and_keeps_the_padding():
    images = torch.arange(2 * 1 * 2 * 5, dtype=torch.float32).reshape(2, 1, 2, 5)
    sizes = torch.tensor([[2, 5], [2, 3]])  # the second image is 3 wide, padded to 5
    flipped = flip_images(images, sizes)
    assert flipped[0, 0, 0].tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert flipped[1, 0, 1].tolist() == [17.0, 16.0, 15.0, 18.0, 19.0]
    torch.testing.assert_close(flip_images(flipped, sizes), images)


def _outputs(proposals, dx, width=100):
    """One image, one RoI, K = 1: raw detection outputs with class-1 score 0.9."""
    return {"image_sizes": torch.tensor([[60, width]]),
            "proposals": torch.tensor([[proposals]]), "proposal_valid": torch.ones(1, 1, dtype=torch.bool),
            "pred_det_logits": torch.tensor([[[0.1, 0.9]]]).log(),
            "pred_det_deltas": torch.tensor([[[dx, 1.0, 0.5, 0.0]]])}


def _detect(out):
    post = DetectionPostprocessor(box_coder=BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)))
    return post(out["proposals"], out["proposal_valid"], out["pred_det_logits"],
                out["pred_det_deltas"], out["image_sizes"])[0]


def test_a_mirrored_pass_unflips_onto_the_original_and_merges_by_nms():
    original = _outputs([10.0, 10.0, 30.0, 30.0], dx=2.0)
    mirrored = _outputs([70.0, 10.0, 90.0, 30.0], dx=-2.0)  # the same RoI seen in the mirror
    merged = merge_flipped(original, mirrored)
    assert merged["proposals"].tolist() == [[[10.0, 10.0, 30.0, 30.0], [10.0, 10.0, 30.0, 30.0]]]
    assert merged["pred_det_deltas"][0, 1].tolist() == [2.0, 1.0, 0.5, 0.0]
    alone, both = _detect(original), _detect(merged)
    assert both["labels"].tolist() == [1]  # the two passes' boxes coincide: NMS keeps one
    torch.testing.assert_close(both["boxes"], alone["boxes"])
    torch.testing.assert_close(both["scores"], alone["scores"])
    # a mirrored pass that sees the object elsewhere adds a detection
    other = merge_flipped(original, _outputs([10.0, 10.0, 30.0, 30.0], dx=0.0))
    assert _detect(other)["labels"].tolist() == [1, 1]


def test_predictor_tta_on_a_mirrored_image_gives_the_mirrored_detections(tiny_checkpoint):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32",
                                          tta=True)
    image = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    det, det_m = predictor(image), predictor(np.ascontiguousarray(image[:, ::-1]))
    assert len(det) > 0
    mirrored = det_m.boxes.copy()
    mirrored[:, [0, 2]] = 48 - det_m.boxes[:, [2, 0]]
    np.testing.assert_allclose(np.sort(det.scores), np.sort(det_m.scores), atol=1e-4)
    order, order_m = np.argsort(-det.scores, kind="stable"), np.argsort(-det_m.scores, kind="stable")
    np.testing.assert_allclose(det.boxes[order], mirrored[order_m], atol=1e-2)
    assert det.labels[order].tolist() == det_m.labels[order_m].tolist()
    predictor.tta = False
    plain = predictor(image)
    assert len(plain) <= len(det) or len(det) == 20  # TTA adds candidates (max_detections 20)


def test_evaluation_with_tta_matches_the_predictor_with_tta(tiny_checkpoint, tmp_path):
    """tools/eval.py's path (dataset -> loader -> predict(tta=True)) and Predictor(tta=True)
    give the same detections, and they differ from those without TTA."""
    transforms = build_transforms(train=False, min_size=TINY_SIZE, max_size=TINY_SIZE)
    val_set = ShapesDetection(root=tmp_path / "shapes", split="val", num_train=1, num_val=2,
                              image_size=TINY_SIZE, transforms=transforms)
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32",
                                          tta=True)
    loader = build_dataloader(dataset=val_set, batch_size=2, train=False)
    cpu = torch.device("cpu")
    reference = predict(predictor.model, loader, device=cpu, progress=False,
                        forward=forward_with_flip)
    plain = predict(predictor.model, loader, device=cpu, progress=False)
    paths = [val_set.image_dir / val_set.coco.imgs[d["image_id"]]["file_name"] for d in reference]
    for ref, got, without in zip(reference, predictor(paths), plain, strict=True):
        assert len(got) == len(ref["scores"]) > 0
        np.testing.assert_allclose(got.boxes, ref["boxes"].numpy(), atol=1e-4)
        np.testing.assert_allclose(got.scores, ref["scores"].numpy(), atol=1e-5)
        assert not (len(without["scores"]) == len(got)
                    and np.allclose(without["boxes"].numpy(), got.boxes, atol=1e-3))


@pytest.mark.parametrize(("config", "overrides", "message"), [
    ("predict", ["input=x.jpg", "backend=onnxruntime", "tta=true"],
     "tta=true is not supported with backend=onnxruntime"),
    ("predict", ["input=x.jpg", "tta=maybe"], "tta must be true or false, got 'maybe'"),
    ("eval", ["results=r.json", "tta=true"], "tta=true is not supported with results="),
])
def test_configs_that_cannot_do_tta_refuse_it(config, overrides, message):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config, overrides=["device=cpu", *overrides])
    check = checks.check_predict_config if config == "predict" else checks.check_eval_config
    with pytest.raises(checks.ConfigError, match=message):
        check(cfg)


def test_eval_tool_with_tta_and_soft_nms_writes_its_own_files(tiny_checkpoint, tmp_path):
    """tools/eval.py tta=true nms=linear: runs, and writes <stem>_linear_tta_* beside the
    checkpoint, with other detections than the plain run's <stem>_* (the stem names the
    dataset: this is another one than the checkpoint's own)."""
    root = tmp_path / "coco"
    (root / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images = []
    for image_id in (1, 2):
        cv2.imwrite(str(root / "val" / f"{image_id}.png"),
                    rng.integers(0, 255, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": TINY_SIZE,
                       "height": TINY_SIZE})
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20],
                    "area": 400, "iscrowd": 0}]
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(TINY_CLASSES)]
    (root / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    checkpoint = tmp_path / "run" / "final.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    common = [f"checkpoint={checkpoint}", "dataset=coco", f"dataset.root={root}",
              "dataset.val_split=val", f"dataset.min_size={TINY_SIZE}",
              f"dataset.max_size={TINY_SIZE}", "device=cpu", "num_workers=0", "num_visualize=0"]
    plain = run_tool("eval.py", common, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    done = run_tool("eval.py", [*common, "tta=true", "nms=linear"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stem = f"final_eval_coco_{root.name}_val"
    ours = json.loads((checkpoint.parent / f"{stem}_linear_tta_results.json").read_text())
    theirs = json.loads((checkpoint.parent / f"{stem}_results.json").read_text())
    assert ours and ours != theirs
    bad = run_tool("eval.py", [*common, "nms=soft"], cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr == "error: nms must be null, hard, linear or gaussian, got 'soft'\n"
