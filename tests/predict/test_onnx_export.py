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
from helpers.tiny_checkpoint import TINY_CLASSES, TINY_SIZE, tiny_model_spec

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from detector.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from detector.data import ShapesDetection, build_transforms  # noqa: E402
from detector.data.image_io import read_image_rgb  # noqa: E402
from detector.errors import UserError  # noqa: E402
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
from detector.predict.onnx_predictor import (  # noqa: E402
    ITERATING,
    OnnxModelError,
    OnnxPredictor,
    check_graph,
)
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
                           min_score=0.05, progress=False)
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


# --- hostile model files: refused at load, one line each ----------------------------------------

def _loop(name: str = "spin") -> onnx.NodeProto:
    """A Loop of 10^12 steps whose body does nothing: onnxruntime would run it for days."""
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])])
    return helper.make_node("Loop", ["trips", "yes"], [], name=name, body=body)


def _hostile_model(exported_path, place: str) -> onnx.ModelProto:
    """The exported model (its metadata, inputs and outputs) plus a Loop: at the top, inside the
    then-branch of an If (inside another If), or inside a local function."""
    model = onnx.load(str(exported_path))
    consts = [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor(
                  "t", TensorProto.INT64, [], [10**12])),
              helper.make_node("Constant", [], ["yes"], value=helper.make_tensor(
                  "y", TensorProto.BOOL, [], [True]))]
    node = _loop()
    if place in ("if", "nested if"):
        for _ in range(1 if place == "if" else 2):
            branch = helper.make_graph([node], "branch", [], [])
            node = helper.make_node("If", ["yes"], [], then_branch=branch, else_branch=branch)
    elif place == "function":
        model.functions.append(helper.make_function("evil", "spin", ["trips", "yes"], [],
                                                    [_loop()], [helper.make_opsetid("", 17)]))
        node = helper.make_node("spin", ["trips", "yes"], [], domain="evil")
    model.graph.node.extend([*consts, node])
    return model


@pytest.mark.parametrize("place", ["top", "if", "nested if", "function"])
def test_a_graph_with_a_loop_anywhere_is_refused_before_onnxruntime(exported, tmp_path, place,
                                                                    monkeypatch):
    path = tmp_path / "loop.onnx"
    onnx.save(_hostile_model(exported.path, place), str(path))
    monkeypatch.setattr("onnxruntime.InferenceSession",
                        lambda *a, **k: pytest.fail("onnxruntime must not see it"))
    with pytest.raises(OnnxModelError, match="has a Loop node \\('spin'\\).*refused") as info:
        OnnxPredictor.from_file(path)
    assert "\n" not in str(info.value)


def test_the_exported_graph_passes_the_graph_check(exported):
    """Its If nodes (torchvision's batched_nms) are allowed and searched; it has no loop."""
    model = onnx.load(str(exported.path))
    assert {n.op_type for n in model.graph.node}.isdisjoint(ITERATING)
    assert "If" in {n.op_type for n in model.graph.node}
    check_graph(exported.path)


def _with_metadata(exported_path, out, **raw: str):
    """A copy of the exported model whose ``detector.<key>`` metadata holds the raw JSON text."""
    model = onnx.load(str(exported_path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({f"detector.{key}": text for key, text in raw.items()})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize(("raw", "message"), [
    ({"label_to_cat_id": '{"\u00b2": 1}'}, "label_to_cat_id"),
    ({"label_to_cat_id": '{"' + "1" * 4301 + '": 1}'}, "label_to_cat_id"),
    ({"min_size": "1" + "0" * 400}, "min_size is malformed"),
    ({"max_size": "60000"}, "max_size is malformed"),
    ({"input_size": "[64, 60000]"}, "input_size is malformed"),
    ({"min_size": "600", "max_size": "1000"}, "cannot hold the 600 x 600 a square image"),
    ({"min_size": "null", "input_size": "[32, 32]"}, "its metadata says \\[32, 32\\]"),
])
def test_metadata_that_would_fail_later_is_refused_at_load(exported, tmp_path, raw, message):
    path = _with_metadata(exported.path, tmp_path / "m.onnx", **raw)
    with pytest.raises(OnnxModelError, match=message) as info:
        OnnxPredictor.from_file(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_min_size_null_is_accepted_and_keeps_the_image_size(exported, tmp_path):
    """What export writes for dataset.min_size=null: no resize (remove the None case from the
    metadata check and this fails)."""
    predictor = OnnxPredictor.from_file(_with_metadata(exported.path, tmp_path / "n.onnx",
                                                       min_size="null"))
    assert predictor.info["min_size"] is None
    feeds, _ = predictor.preprocess([(np.zeros((40, 56, 3), np.uint8), None)])
    assert feeds["image_sizes"].tolist() == [[40, 56]]
    assert predictor(np.zeros((40, 56, 3), np.uint8)).image_size == (40, 56)


def test_a_graph_with_other_outputs_is_refused_at_load(exported, tmp_path):
    model = onnx.load(str(exported.path))
    del model.graph.output[3]  # boxes, scores, labels: no valid
    onnx.save(model, str(tmp_path / "three.onnx"))
    with pytest.raises(OnnxModelError, match="outputs are boxes, scores, labels, not boxes"):
        OnnxPredictor.from_file(tmp_path / "three.onnx")


def test_outputs_of_the_wrong_shape_at_run_time_are_one_line(onnx_predictor):
    class Session:
        def run(self, names, feeds):
            return [np.zeros((1, 5, 4), np.float32), np.zeros((1, 4), np.float32),
                    np.zeros((1, 5), np.int64), np.zeros((1, 5), bool)]

    broken = dataclasses.replace(onnx_predictor, session=Session())
    with pytest.raises(OnnxModelError, match="outputs of shapes"):
        broken(np.zeros((64, 64, 3), np.uint8))


def test_an_image_the_input_cannot_hold_is_a_user_error(onnx_predictor):
    smaller = dataclasses.replace(onnx_predictor, input_size=(32, 32))
    with pytest.raises(UserError, match="x.png: a 64 x 64 image resizes to 48 x 48"):
        smaller.predict_arrays([(np.zeros((64, 64, 3), np.uint8), "x.png")])


def test_a_failed_export_leaves_no_file_and_keeps_the_old_one(checkpoint, tmp_path, monkeypatch):
    """The file is checked under a temporary name: junk fails the check, nothing takes the name,
    the earlier file there is untouched and no temporary file is left."""
    monkeypatch.setattr("detector.predict.onnx_export._trace",
                        lambda model, path, **k: path.write_bytes(b"junk, not onnx"))
    with pytest.raises(OnnxModelError, match="is not an ONNX model"):
        export_checkpoint(checkpoint, tmp_path / "new.onnx")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old.onnx").write_bytes(b"an earlier export")
    with pytest.raises(OnnxModelError):
        export_checkpoint(checkpoint, tmp_path / "old.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["old.onnx"]
    assert (tmp_path / "old.onnx").read_bytes() == b"an earlier export"


def test_export_refuses_absurd_sizes_and_outputs_before_tracing(checkpoint, tmp_path,
                                                                monkeypatch):
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("nothing to trace"))
    with pytest.raises(ExportError, match="at most 4096; got 60000 x 64"):
        export_checkpoint(checkpoint, tmp_path / "x.onnx", height=60000)
    with pytest.raises(ExportError, match="cannot hold the 48 x 48 a square image resizes to"):
        export_checkpoint(checkpoint, tmp_path / "x.onnx", height=32)
    with pytest.raises(ExportError, match="is the checkpoint itself"):
        export_checkpoint(checkpoint, checkpoint)
    with pytest.raises(ExportError, match="is a folder"):
        export_checkpoint(checkpoint, tmp_path)
