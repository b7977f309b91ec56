"""The Python API on one's own images (detector/predict/predictor.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.tiny_checkpoint import TINY_CLASSES, TINY_SIZE

from detector.data import DatasetError, ShapesDetection, build_dataloader, build_transforms
from detector.data.image_io import read_image_rgb
from detector.evaluation.inference import predict
from detector.predict.predictor import (
    Detections,
    Predictor,
    checkpoint_metrics,
    load_image,
    min_score_note,
)
from detector.visualize import save_image


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", batch_size=2)


@pytest.fixture(scope="module")
def val_set(tmp_path_factory) -> ShapesDetection:
    transforms = build_transforms(train=False, min_size=TINY_SIZE, max_size=TINY_SIZE)
    return ShapesDetection(root=tmp_path_factory.mktemp("data") / "shapes", split="val",
                           num_train=2, num_val=3, image_size=TINY_SIZE, transforms=transforms)


def _same(a: Detections, b: Detections, atol: float = 1e-4) -> None:
    assert a.labels.tolist() == b.labels.tolist()
    np.testing.assert_allclose(a.boxes, b.boxes, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=atol)


def test_matches_the_evaluation_pipeline(predictor, val_set):
    """Files in, the same detections as tools/eval.py's path (dataset -> loader -> predict)."""
    loader = build_dataloader(dataset=val_set, batch_size=3, train=False)
    reference = predict(predictor.model, loader, device=torch.device("cpu"), progress=False)
    paths = [val_set.image_dir / val_set.coco.imgs[d["image_id"]]["file_name"] for d in reference]
    results = predictor(paths)
    assert len(results) == 3
    for ref, got, path in zip(reference, results, paths, strict=True):
        assert got.source == str(path) and got.image_size == (TINY_SIZE, TINY_SIZE)
        assert len(got) == len(ref["scores"]) > 0  # untrained: scores near 1 / (K + 1) > 0.05
        np.testing.assert_allclose(got.boxes, ref["boxes"].numpy(), atol=1e-4)
        np.testing.assert_allclose(got.scores, ref["scores"].numpy(), atol=1e-5)
        assert got.class_names == [TINY_CLASSES[i - 1] for i in ref["labels"].tolist()]


def test_channels_last_weights_by_default_and_the_same_detections(predictor, tiny_checkpoint,
                                                                   val_set):
    """Inference runs NHWC convolutions (the layout training keeps); the plain layout gives the
    same detections to float rounding."""
    conv = predictor.model.backbone.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32",
                                      channels_last=False)
    assert plain.model.backbone.features[0].weight.is_contiguous()
    path = val_set.records[0].path
    _same(predictor(path), plain(path))


def test_every_input_kind_gives_the_same_result(predictor, val_set, tmp_path):
    from PIL import Image

    path = val_set.records[0].path
    rgb = read_image_rgb(path)
    by_path = predictor(path)
    assert isinstance(by_path, Detections)
    _same(by_path, predictor(rgb))
    _same(by_path, predictor(np.ascontiguousarray(rgb[:, :, ::-1]), bgr=True))
    _same(by_path, predictor(Image.fromarray(rgb)))
    batch = predictor([rgb, path, rgb])  # 3 images, batch_size 2: two forward passes
    assert isinstance(batch, list) and len(batch) == 3
    for result in batch:
        _same(by_path, result)


def test_boxes_come_back_in_original_pixels(predictor, val_set):
    """A 2x nearest-neighbour enlargement resizes back to the same 64 px input, so the same
    detections must come out with every coordinate doubled."""
    rgb = read_image_rgb(val_set.records[1].path)
    small, large = predictor([rgb, rgb.repeat(2, axis=0).repeat(2, axis=1)])
    assert large.image_size == (2 * TINY_SIZE, 2 * TINY_SIZE)
    assert small.labels.tolist() == large.labels.tolist()
    np.testing.assert_allclose(large.boxes, 2 * small.boxes, atol=1e-3)
    assert (large.boxes[:, 2:] <= 2 * TINY_SIZE + 1e-3).all() and (large.boxes >= 0).all()


def test_the_predictor_returns_what_the_model_keeps(predictor, val_set):
    rgb = read_image_rgb(val_set.records[0].path)
    everything = predictor(rgb)
    assert len(everything) > 0 and (everything.scores > 0.05).all()  # the model's own threshold
    cut = float(np.median(everything.scores))
    kept = everything.above(cut)
    assert 0 < len(kept) < len(everything) or cut == everything.scores.min()
    assert (kept.scores >= cut).all()
    assert len(kept) == int((everything.scores >= cut).sum())


def test_above_keeps_scores_at_least_the_threshold_raw_or_as_shown():
    det = Detections(boxes=np.arange(16, dtype=np.float32).reshape(4, 4),
                     scores=np.array([0.9, 0.5, 0.49996, 0.2], np.float32),
                     labels=np.array([1, 2, 1, 2]), class_names=["a", "b", "a", "b"],
                     image_size=(10, 20), source="x.jpg")
    kept = det.above(0.5)  # 0.49996 is below 0.5 ...
    assert kept.scores.tolist() == pytest.approx([0.9, 0.5]) and kept.class_names == ["a", "b"]
    assert kept.labels.tolist() == [1, 2] and kept.boxes.tolist() == det.boxes[:2].tolist()
    assert (kept.image_size, kept.source) == ((10, 20), "x.jpg")
    shown = det.above(0.5, as_shown=True)  # ... but the JSON shows it as 0.5
    assert [row["score"] for row in shown.to_list()] == [0.9, 0.5, 0.5]
    assert len(det.above(0.95)) == 0 and len(det.above(0.0)) == 4


def test_bad_inputs_are_clear_errors(predictor, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(DatasetError, match="notes.jpg"):
        predictor(text)
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        predictor(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(ValueError, match="path, a numpy array or a PIL image"):
        predictor(42)
    assert predictor([]) == []


def test_grayscale_arrays_and_files_are_accepted(predictor, tmp_path):
    gray = np.tile(np.arange(48, dtype=np.uint8), (40, 1))
    array, source = load_image(gray)
    assert array.shape == (40, 48, 3) and source is None
    assert (array[..., 0] == gray).all() and (array[..., 2] == gray).all()
    save_image(tmp_path / "g.png", array)
    assert predictor(tmp_path / "g.png").image_size == (40, 48)


def test_detections_to_list_is_coco_xywh():
    det = Detections(boxes=np.array([[10.0, 20.0, 40.0, 60.0]], np.float32),
                     scores=np.array([0.9], np.float32), labels=np.array([2]),
                     class_names=["circle"], image_size=(100, 100))
    (row,) = det.to_list(label_to_cat_id={2: 17})
    assert row["bbox"] == [10.0, 20.0, 30.0, 40.0] and row["box_xyxy"] == [10, 20, 40, 60]
    assert row["category_id"] == 17 and row["category"] == "circle" and row["label"] == 2
    assert row["score"] == pytest.approx(0.9)


def test_detections_to_list_sizes_are_the_float64_differences_of_the_corners():
    """w and h as the corners' Python floats subtract (not float32 differences), rounded to 2
    decimals; no detections, no rows."""
    boxes = np.random.default_rng(0).uniform(0, 1000, (200, 4)).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2]
    # float32(x2 - x1) = 3408.41 after rounding, the float64 difference 3408.40
    boxes[0] = [0.7918000817298889, 0.0, 3409.19677734375, 1.0]
    det = Detections(boxes=boxes, scores=np.full(200, 0.5, np.float32),
                     labels=np.ones(200, np.int64), class_names=["a"] * 200, image_size=(9, 9))
    expected = [[round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
                for x1, y1, x2, y2 in boxes.tolist()]
    assert [row["bbox"] for row in det.to_list()] == expected
    empty = Detections(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                       labels=np.zeros(0, np.int64), class_names=[], image_size=(9, 9))
    assert empty.to_list() == []


def test_info_carries_the_run_metrics(predictor, tiny_checkpoint):
    assert predictor.class_names == TINY_CLASSES
    assert predictor.info["metrics"] == {"AP": 0.25, "AP50": 0.5}
    assert predictor.info["iteration"] == 7 and predictor.info["dataset"] == "shapes"
    assert checkpoint_metrics(tiny_checkpoint.parent / "elsewhere.pth") == {"AP": 0.25,
                                                                            "AP50": 0.5}
    assert checkpoint_metrics(tiny_checkpoint.parent.parent.parent / "x" / "y.pth") is None


def test_a_min_score_below_the_models_threshold_is_said_once():
    """Two filters, two names: min_score after the model only narrows what the model kept."""
    assert min_score_note(0.5, 0.05) is None and min_score_note(0.05, 0.05) is None
    assert min_score_note(0.3, None) is None  # an ONNX model does not say
    note = min_score_note(0.01, 0.05)
    assert note is not None and "min_score 0.01 is below the model's own score_threshold 0.05" in note


def test_the_predictor_reports_its_models_threshold(tiny_checkpoint):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32")
    assert predictor.score_threshold == pytest.approx(predictor.model.postprocessor.score_threshold)
