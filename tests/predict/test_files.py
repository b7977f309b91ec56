"""Prediction on files (detector/predict/files.py): annotated outputs, detections.json that
matches the Predictor, counted skips, and videos frame for frame."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.predict.files import DETECTIONS_FILE, output_paths, predict_files
from detector.predict.inputs import InputError, Inputs, collect_inputs, read_video_batches
from detector.predict.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", batch_size=2)


def _noise(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three good images (one nested two levels down), a text file and a broken JPEG."""
    root = tmp_path / "in"
    for seed, (name, (h, w)) in enumerate({"a.jpg": (64, 64), "b.png": (48, 80),
                                           "sub/deep/c.png": (80, 56)}.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), _noise(seed, h, w))
    (root / "readme.txt").write_text("hello")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return root


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def test_folder_run_writes_annotations_and_matching_json(predictor, folder, tmp_path):
    out = tmp_path / "out"
    report = predict_files(predictor, collect_inputs(folder), out, min_score=0.05,
                           progress=False)
    assert (report.images, report.frames, report.videos) == (3, 0, 0)
    assert sorted(name for name, _ in report.skipped) == ["broken.jpg", "readme.txt"]
    summary = report.summary()
    assert "3 images" in summary and "broken.jpg" in summary and str(out) in summary
    for name in ("a.jpg", "b.png", "sub/deep/c.png"):  # same relative paths, readable images
        assert cv2.imread(str(out / name)) is not None, name
    document = json.loads((out / DETECTIONS_FILE).read_text())
    assert [e["file"] for e in document["images"]] == ["a.jpg", "b.png", "sub/deep/c.png"]
    assert {s["file"] for s in document["skipped"]} == {"broken.jpg", "readme.txt"}
    total = 0
    for entry in document["images"]:
        expected = predictor(folder / entry["file"])
        assert (entry["height"], entry["width"]) == expected.image_size
        got = entry["detections"]
        assert len(got) == len(expected) > 0  # untrained: scores near 1 / (K + 1) > 0.05
        np.testing.assert_allclose([d["bbox"] for d in got], _xywh(expected.boxes), atol=0.01)
        np.testing.assert_allclose([d["score"] for d in got], expected.scores, atol=1e-4)
        assert [d["category"] for d in got] == expected.class_names
        assert [d["category_id"] for d in got] == [predictor.label_to_cat_id[k]
                                                   for k in expected.labels.tolist()]
        total += len(got)
    assert report.detections == total


def test_threshold_filters_what_is_written(predictor, folder, tmp_path):
    report = predict_files(predictor, collect_inputs(folder / "a.jpg"), tmp_path / "o",
                           min_score=1.01, progress=False)
    document = json.loads((tmp_path / "o" / DETECTIONS_FILE).read_text())
    assert report.images == 1 and report.detections == 0
    assert document["images"][0]["detections"] == [] and document["min_score"] == 1.01


def test_video_run_keeps_every_frame(predictor, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 8, (64, 48))
    for i in range(5):
        writer.write(_noise(10 + i, 48, 64))
    writer.release()
    out = tmp_path / "out"
    report = predict_files(predictor, collect_inputs(video), out, min_score=0.05,
                           progress=False)
    assert (report.images, report.frames, report.videos) == (0, 5, 1)
    annotated = [f for batch in read_video_batches(out / "clip.mp4", 8) for f in batch]
    assert len(annotated) == 5 and annotated[0].shape == (48, 64, 3)
    (entry,) = json.loads((out / DETECTIONS_FILE).read_text())["videos"]
    assert entry["output"] == "clip.mp4" and len(entry["frames"]) == 5
    frames = [f for batch in read_video_batches(video, 8) for f in batch]
    for record, det in zip(entry["frames"], predictor(frames), strict=True):
        np.testing.assert_allclose([d["bbox"] for d in record["detections"]],
                                   _xywh(det.boxes).reshape(-1, 4), atol=0.01)


@pytest.mark.parametrize("inside", [".", "sub", "sub/deep"])
def test_output_in_the_input_folder_is_refused(predictor, folder, inside):
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="inside the input folder") as caught:
        predict_files(predictor, collect_inputs(folder), folder / inside, progress=False)
    assert "\n" not in str(caught.value)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_output_over_an_input_file_is_refused(predictor, folder):
    original = (folder / "b.png").read_bytes()  # one named file, output = its own folder
    with pytest.raises(InputError, match="would write over the input file .*b.png"):
        predict_files(predictor, collect_inputs(folder / "b.png"), folder, progress=False)
    assert (folder / "b.png").read_bytes() == original and not (folder / DETECTIONS_FILE).exists()
    assert output_paths(collect_inputs(folder / "b.png"), folder / "out") == {
        folder / "b.png": folder / "out" / "b.png"}


def test_inputs_with_the_same_stem_keep_both(predictor, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for seed, name in enumerate(("a.png", "a.bmp", "a.PNG", "b.jpg", "b.jpeg")):
        cv2.imwrite(str(root / name), _noise(seed, 40 + 8 * seed, 48))
    out = tmp_path / "out"
    report = predict_files(predictor, collect_inputs(root), out, progress=False)
    document = json.loads((out / DETECTIONS_FILE).read_text())
    outputs = {e["file"]: e["output"] for e in document["images"]}
    assert report.images == 5 and len(set(outputs.values())) == 5
    assert outputs["a.png"] == "a.png" and outputs["a.bmp"] == "a.bmp.png"
    assert outputs["b.jpg"] == "b.jpg" and outputs["b.jpeg"] == "b.jpeg.jpg"
    for entry in document["images"]:  # each annotated file is the drawing of its own input
        assert cv2.imread(str(out / entry["output"])).shape[0] == entry["height"]


def test_an_unreadable_file_is_named_in_its_reason(predictor, tmp_path):
    root = tmp_path / "in"
    (root / "folder.png").mkdir(parents=True)  # np.fromfile fails on it with an OSError
    cv2.imwrite(str(root / "ok.png"), _noise(0, 32, 32))
    inputs = Inputs(root=root, images=[root / "folder.png", root / "ok.png"])
    report = predict_files(predictor, inputs, tmp_path / "out", progress=False)
    assert report.images == 1
    ((name, reason),) = report.skipped
    assert name == "folder.png" and reason.startswith("folder.png cannot be read: ")
    assert "''" not in reason and "  " not in reason
