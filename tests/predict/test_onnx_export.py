"""ONNX export (detector/predict/onnx_export.py) and onnxruntime prediction (detector/predict/onnx_predictor.py):
the exported graph gives PyTorch's detections (boxes within 0.5 px, 0.05 px where the inputs are
the same, scores within 1e-3, same labels) on a tiny checkpoint whose run resized with min_size !=
max_size and had its own category ids, padding rows are zero, and OnnxPredictor is a drop-in
Predictor."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from tiny_checkpoint import TINY_CLASSES, TINY_SIZE, tiny_model_spec

pytest.importorskip("onnxruntime")

from detector.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
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

MIN_SIZE = 48  # the run resizes shorter sides to 48 and longer ones to at most TINY_SIZE = 64
CAT_IDS = {1: 11, 2: 3, 3: 7, 4: 90}  # label -> the dataset's own category id


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny model as a run with ``min_size`` 48 != ``max_size`` 64 and its own category ids.
    Its detections cannot fill the graph's output slots: 6 proposals x 4 classes = D = 24 slots,
    and at score threshold 0.34 at most 2 of the 4 classes of a proposal pass (the 5 softmax
    scores sum to 1), so at least half of every image's rows are padding. A +2 bias on class 1's
    logit lifts its score to about e^2 / (e^2 + 4) = 0.65, so there are detections too."""
    spec = {**tiny_model_spec(), "rpn_post_nms_top_n": [50, 6], "score_threshold": 0.34,
            "max_detections": 100}
    torch.manual_seed(0)
    model = build_from_spec({**spec, "num_classes": len(TINY_CLASSES)}).eval()
    with torch.no_grad():
        model.roi_head.cls_score.bias[1] += 2.0
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "final.pth"
    config = {"model": spec, "dataset": {"name": "shapes", "min_size": MIN_SIZE,
                                         "max_size": TINY_SIZE}}
    save_checkpoint(path, {"model": model.state_dict(), "config": config,
                           "class_names": TINY_CLASSES, "iteration": 7,
                           "label_to_cat_id": CAT_IDS})
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


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
    assert onnx_predictor.label_to_cat_id == CAT_IDS
    info = onnx_predictor.info
    assert (info["min_size"], info["max_size"], info["iteration"]) == (MIN_SIZE, TINY_SIZE, 7)


def test_onnx_predictor_resizes_as_the_run_did(onnx_predictor):
    """min(48 / shorter, 64 / longer): 40 x 100 -> x 0.64 (the longer side binds) = 26 x 64;
    60 x 70 -> x 0.8 (the shorter side binds) = 48 x 56."""
    images = [(np.zeros((40, 100, 3), np.uint8), None), (np.zeros((60, 70, 3), np.uint8), None)]
    feeds, per_image = onnx_predictor.preprocess(images)
    assert feeds["image_sizes"].tolist() == [[26, 64], [48, 56]]
    assert [scale for _, scale, _ in per_image] == [(26 / 40, 64 / 100), (48 / 60, 56 / 70)]


def test_graph_matches_pytorch_on_a_padded_batch(checkpoint, onnx_predictor, val_images):
    """Same input tensors in both: three images, one of them smaller than the padded input;
    padding rows (see ``checkpoint``) are all zero."""
    arrays = [read_image_rgb(p) for p in val_images]
    arrays[1] = arrays[1][:40, :48]  # resizes (x 1.2) to 48 x 58 inside the 64 x 64 input
    feeds, _ = onnx_predictor.preprocess([(a, None) for a in arrays])
    assert feeds["image_sizes"].tolist() == [[48, 48], [48, 58], [48, 48]]
    graph = DetectionGraph(model_from_checkpoint(load_checkpoint(checkpoint))).eval()
    with torch.no_grad():
        expected = graph(*(torch.from_numpy(v) for v in feeds.values()))
    got = onnx_predictor.session.run(None, feeds)
    assert got[0].shape == tuple(expected[0].shape) and got[3].dtype == np.bool_
    for ref, out in zip(_graph_detections(*(t.numpy() for t in expected)),
                        _graph_detections(*got), strict=True):
        assert len(ref) > 0
        assert_same_detections(ref, out)
    boxes, scores, labels, valid = got
    assert valid.shape == (3, 24) and (valid.sum(axis=1) <= 12).all()  # padding rows exist
    assert not boxes[~valid].any() and not scores[~valid].any() and not labels[~valid].any()
    assert (scores[valid] > 0.34).all() and (labels[valid] >= 1).all()


def test_onnx_predictor_matches_predictor(checkpoint, onnx_predictor, val_images):
    """64 px images resize to 48 x 48, which PyTorch's collate pads to the export's 64 x 64:
    the same input, so the same detections. Both return every detection the model keeps; the
    graph's zero-score padding rows would come back too, unless the ``valid`` mask drops them."""
    torch_predictor = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32",
                                                batch_size=3)
    for ref, got in zip(torch_predictor(val_images), onnx_predictor(val_images), strict=True):
        assert got.source == ref.source and got.image_size == ref.image_size
        assert len(ref) > 0
        assert_same_detections(ref, got)
        assert sorted(got.class_names) == sorted(ref.class_names)
    single = onnx_predictor(val_images[0])  # one in, one out
    assert isinstance(single, Detections) and len(single) > 0 and (single.scores > 0.05).all()


def test_onnx_predictor_runs_predict_files(onnx_predictor, val_images, tmp_path):
    report = predict_files(onnx_predictor, collect_inputs(val_images[0].parent), tmp_path / "o",
                           score_threshold=0.05, progress=False)
    assert report.images == len(val_images) and report.detections > 0


def test_non_square_image_matches_predictor_to_a_twentieth_of_a_pixel(checkpoint, onnx_predictor,
                                                                      val_images):
    """A 50 x 70 image resizes (x 64 / 70) to 46 x 64, so y and x scale differently
    (sy = 46 / 50 = 0.92, sx = 64 / 70 = 0.914): a swapped axis moves boxes by up to 0.4 px.
    PyTorch pads it to 64 x 64, the export's input size: the same input in both."""
    image = cv2.resize(read_image_rgb(val_images[0]), (70, 50), interpolation=cv2.INTER_AREA)
    torch_predictor = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    ref, got = torch_predictor(image), onnx_predictor(image)
    assert got.image_size == ref.image_size == (50, 70) and len(ref) > 0
    assert_same_detections(ref, got, box_atol=0.05)


def test_bad_sizes_and_files_are_clear_errors(checkpoint, onnx_predictor, tmp_path):
    with pytest.raises(ExportError, match="multiples of 16"):
        export_checkpoint(checkpoint, tmp_path / "x.onnx", height=40)
    smaller = dataclasses.replace(onnx_predictor, input_size=(32, 32))  # as if exported smaller
    with pytest.raises(ValueError, match="resizes to 48 x 48, larger than the model's input 32"):
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
