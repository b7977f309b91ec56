"""ONNX export (detector/predict/onnx_export.py) and onnxruntime prediction (detector/predict/onnx_predictor.py):
the exported graph gives PyTorch's detections (boxes within 0.5 px, scores within 1e-3, same
labels) on the tiny checkpoint, and OnnxPredictor is a drop-in Predictor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_checkpoint import TINY_CLASSES, TINY_SIZE, tiny_model_spec

pytest.importorskip("onnxruntime")

from detector.checkpoint import load_checkpoint  # noqa: E402
from detector.data import ShapesDetection, build_transforms  # noqa: E402
from detector.data.image_io import read_image_rgb  # noqa: E402
from detector.modeling.spec import build_from_spec, model_from_checkpoint  # noqa: E402
from detector.predict.files import predict_files  # noqa: E402
from detector.predict.inputs import collect_inputs  # noqa: E402
from detector.predict.onnx_export import (  # noqa: E402
    DetectionGraph,
    ExportError,
    default_input_size,
    export_checkpoint,
    export_onnx,
)
from detector.predict.onnx_predictor import OnnxModelError, OnnxPredictor  # noqa: E402
from detector.predict.predictor import Detections, Predictor  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    return export_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="module")
def onnx_predictor(exported) -> OnnxPredictor:
    return OnnxPredictor.from_file(exported.path, batch_size=3)


@pytest.fixture(scope="module")
def val_images(tmp_path_factory) -> list:
    data = ShapesDetection(root=tmp_path_factory.mktemp("data") / "shapes", split="val",
                           num_train=1, num_val=3, image_size=TINY_SIZE,
                           transforms=build_transforms(train=False, min_size=TINY_SIZE,
                                                       max_size=TINY_SIZE))
    return [record.path for record in data.records]


def assert_same_detections(expected, got, *, box_atol=0.5, score_atol=1e-3) -> None:
    """Same detections as sets: each expected one has a partner of the same label, box within
    ``box_atol`` px and score within ``score_atol`` (order may differ between tied scores)."""
    assert len(got) == len(expected)
    unused = np.ones(len(got), bool)
    for box, score, label in zip(expected.boxes, expected.scores, expected.labels, strict=True):
        match = (unused & (got.labels == label) & (np.abs(got.scores - score) <= score_atol)
                 & (np.abs(got.boxes - box) <= box_atol).all(axis=1))
        assert match.any(), f"no partner for label {label} score {score:.4f} box {box}"
        unused[np.flatnonzero(match)[0]] = False


def _graph_detections(boxes, scores, labels, valid) -> list[Detections]:
    out = []
    for b, s, k, v in zip(boxes, scores, labels, valid, strict=True):
        v = np.asarray(v, bool)
        out.append(Detections(np.asarray(b)[v], np.asarray(s)[v], np.asarray(k)[v],
                              [], (0, 0)))
    return out


def test_metadata_makes_the_file_self_contained(exported, onnx_predictor):
    assert exported.input_size == (TINY_SIZE, TINY_SIZE) == onnx_predictor.input_size
    assert onnx_predictor.class_names == TINY_CLASSES
    assert onnx_predictor.label_to_cat_id == {i + 1: i + 1 for i in range(len(TINY_CLASSES))}
    assert onnx_predictor.info["min_size"] == TINY_SIZE and onnx_predictor.info["iteration"] == 7


def test_graph_matches_pytorch_on_a_padded_batch(tiny_checkpoint, onnx_predictor, val_images):
    """Same input tensors in both: three images, one of them smaller than the padded input."""
    arrays = [read_image_rgb(p) for p in val_images]
    arrays[1] = arrays[1][:40, :48]  # resizes to 53 x 64 inside the 64 x 64 input
    feeds, _ = onnx_predictor.preprocess([(a, None) for a in arrays])
    assert feeds["image_sizes"].tolist() == [[64, 64], [53, 64], [64, 64]]
    graph = DetectionGraph(model_from_checkpoint(load_checkpoint(tiny_checkpoint))).eval()
    with torch.no_grad():
        expected = graph(*(torch.from_numpy(v) for v in feeds.values()))
    got = onnx_predictor.session.run(None, feeds)
    assert got[0].shape == tuple(expected[0].shape) and got[3].dtype == np.bool_
    for ref, out in zip(_graph_detections(*(t.numpy() for t in expected)),
                        _graph_detections(*got), strict=True):
        assert len(ref) > 0  # untrained: scores near 1 / (K + 1), above the model's 0.05
        assert_same_detections(ref, out)
    assert not got[1][~got[3]].any()  # padding rows are zero


def test_onnx_predictor_matches_predictor(tiny_checkpoint, onnx_predictor, val_images):
    """Images of the export size (64 px): no extra padding, so the same detections."""
    torch_predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32",
                                                batch_size=3)
    for ref, got in zip(torch_predictor(val_images), onnx_predictor(val_images), strict=True):
        assert got.source == ref.source and got.image_size == ref.image_size
        assert_same_detections(ref, got)
        assert sorted(got.class_names) == sorted(ref.class_names)
    single = onnx_predictor(val_images[0])  # one in, one out
    assert isinstance(single, Detections) and len(single) > 0 and (single.scores > 0.05).all()


def test_onnx_predictor_runs_predict_files(onnx_predictor, val_images, tmp_path):
    report = predict_files(onnx_predictor, collect_inputs(val_images[0].parent), tmp_path / "o",
                           score_threshold=0.05, progress=False)
    assert report.images == len(val_images) and report.detections > 0


def test_bad_sizes_and_files_are_clear_errors(tiny_checkpoint, onnx_predictor, tmp_path):
    with pytest.raises(ExportError, match="multiples of 16"):
        export_checkpoint(tiny_checkpoint, tmp_path / "x.onnx", height=40)
    smaller = dataclasses.replace(onnx_predictor, input_size=(32, 32))  # as if exported smaller
    with pytest.raises(ValueError, match="resizes to 64 x 64, larger than the model's input 32"):
        smaller(np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(OnnxModelError, match="junk.onnx"):
        OnnxPredictor.from_file(tmp_path / "junk.onnx")
    assert default_input_size(600, 1000) == (1024, 1024)


@pytest.mark.slow
def test_roi_align_model_exports_too(tmp_path, val_images):
    """The RoIAlign pooler (aligned, sampling ratio 2) exports through torchvision's kernel and
    its RoiAlign symbolic; eager inference on the CPU took the sparse product: same detections."""
    spec = tiny_model_spec(len(TINY_CLASSES))
    spec["pooler"] = {"_target_": "detector.modeling.pooler.RoIAlign", "output_size": 7,
                      "spatial_scale": 0.0625, "sampling_ratio": 2, "aligned": True}
    torch.manual_seed(0)
    model = build_from_spec(spec).eval()
    path = export_onnx(model, tmp_path / "align.onnx", height=TINY_SIZE, width=TINY_SIZE)
    import onnxruntime as ort

    images = torch.stack([build_transforms(train=False, min_size=TINY_SIZE, max_size=TINY_SIZE)(
        image=read_image_rgb(p), boxes=np.zeros((0, 4)), labels=np.zeros(0))["image"]
        for p in val_images])
    sizes = torch.full((len(images), 2), TINY_SIZE, dtype=torch.long)
    with torch.no_grad():
        expected = DetectionGraph(model)(images, sizes)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": images.numpy(), "image_sizes": sizes.numpy()})
    for ref, out in zip(_graph_detections(*(t.numpy() for t in expected)),
                        _graph_detections(*got), strict=True):
        assert len(ref) > 0
        assert_same_detections(ref, out)
