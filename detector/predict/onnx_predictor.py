"""Run an exported model (``tools/export.py``) with onnxruntime, behind ``Predictor``'s interface.

    >>> from detector.predict.onnx_predictor import OnnxPredictor
    >>> predictor = OnnxPredictor.from_file("final.onnx")
    >>> result = predictor("street.jpg")        # the same Detections as Predictor returns
    >>> confident = result.above(0.5)

Images go through the same eval preprocessing as ``Predictor`` (the run's resize, ImageNet
normalisation), read from the file's metadata, and are zero-padded to the graph's fixed input
size; the network itself runs in onnxruntime (CPU), not PyTorch.

A ``.onnx`` file is a program for onnxruntime, and one may come from anyone. Before onnxruntime
sees it, a graph with a node that iterates (``Loop``, ``Scan``, ``SequenceMap``, at any depth of
subgraphs or functions: a 10^12-step loop would run for days and cannot be interrupted) or with
tensors stored outside the file is refused; then its inputs, outputs and metadata must be what
``tools/export.py`` writes (``check_signature``, ``check_metadata``). Each refusal is one
``OnnxModelError`` line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.data.transforms import DetectionTransforms, build_transforms
from detector.errors import UserError
from detector.modeling.spec import MAX_IMAGE_SIDE, SpecError, checked_label_map
from detector.predict.inputs import InputError
from detector.predict.predictor import Detections, Predictor

__all__ = ["INPUT_NAMES", "ITERATING", "METADATA_PREFIX", "OUTPUT_NAMES", "OnnxModelError",
           "OnnxPredictor", "check_graph", "check_metadata", "check_signature", "label_map",
           "read_metadata"]

# the graph's inputs and outputs, and the prefix of its metadata keys, as tools/export.py writes
INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "valid")
METADATA_PREFIX = "detector."
ITERATING = ("Loop", "Scan", "SequenceMap")  # ops that run a subgraph a data-given number of times
# name -> (element type, rank, fixed dimensions by position) of what tools/export.py writes
_SIGNATURE = {
    "images": ("tensor(float)", 4, {1: 3}), "image_sizes": ("tensor(int64)", 2, {1: 2}),
    "boxes": ("tensor(float)", 3, {2: 4}), "scores": ("tensor(float)", 2, {}),
    "labels": ("tensor(int64)", 2, {}), "valid": ("tensor(bool)", 2, {}),
}


class OnnxModelError(UserError, ValueError):
    """The file is not an ONNX model written by ``tools/export.py``."""


def read_metadata(session: Any, source: str | Path = "the model") -> dict:
    """The ``detector.*`` metadata of an onnxruntime session, JSON-decoded, prefix dropped.

    Raises:
        OnnxModelError: a value that is not JSON (naming ``source`` and the key).
    """
    props = session.get_modelmeta().custom_metadata_map
    meta = {}
    for key, value in props.items():
        if key.startswith(METADATA_PREFIX):
            try:
                meta[key[len(METADATA_PREFIX):]] = json.loads(value)
            except (TypeError, ValueError):
                raise OnnxModelError(f"{source}: metadata {key} is not valid JSON") from None
    return meta


def _is_int(value: Any, low: int = 1, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def _side(value: Any) -> bool:
    return _is_int(value, high=MAX_IMAGE_SIDE)


def check_metadata(meta: dict, source: str | Path = "the model") -> None:
    """Refuse metadata that ``tools/export.py`` would not write: the keys ``OnnxPredictor``
    reads must have their types and ranges (class_names: non-empty strings; input_size: two
    integers in 1..4096; min_size: an integer in 1..4096 or null; max_size: an integer in
    1..4096; label_to_cat_id: labels to category ids as ``checked_label_map`` takes them;
    iteration: an integer or null), and the input must hold a square image as the resize
    settings make it (else every ordinary image would fail at prediction time).

    Raises:
        OnnxModelError: one line naming ``source`` and the first bad key.
    """
    if "class_names" not in meta or "input_size" not in meta:
        raise OnnxModelError(f"{source} has no detector metadata; export it with tools/export.py")
    names, size = meta["class_names"], meta["input_size"]
    checks = {
        "class_names": isinstance(names, list) and bool(names)
        and all(isinstance(name, str) for name in names),
        "input_size": isinstance(size, list) and len(size) == 2 and all(map(_side, size)),
        "min_size": meta.get("min_size") is None or _side(meta["min_size"]),
        "max_size": _side(meta.get("max_size", 1000)),
        "iteration": meta.get("iteration") is None or _is_int(meta["iteration"], low=0),
    }
    for key, ok in checks.items():
        if not ok:
            shown = json.dumps(meta.get(key))
            shown = shown[:80] if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} chars)"
            ranges = f" (sizes lie in 1..{MAX_IMAGE_SIDE})" if key.endswith("size") else ""
            raise OnnxModelError(f"{source}: metadata {METADATA_PREFIX}{key} is malformed"
                                 f"{ranges}: {shown}")
    label_map(meta, source)
    min_size, max_size = meta.get("min_size", 600), meta.get("max_size", 1000)
    if min_size is not None and min(size) < min(min_size, max_size):
        side = min(min_size, max_size)
        raise OnnxModelError(f"{source}: its input {size[0]} x {size[1]} cannot hold the {side} x "
                             f"{side} a square image resizes to (min_size {min_size}, max_size "
                             f"{max_size}); export it again with tools/export.py")


def label_map(meta: dict, source: str | Path = "the model") -> dict[int, int]:
    """The metadata's ``label_to_cat_id`` as ints (``checked_label_map``: "\u00b2" or a
    4,301-digit id is refused).

    Raises:
        OnnxModelError: naming ``source`` and the bad entry.
    """
    try:
        return checked_label_map(meta.get("label_to_cat_id", {}),
                                 path=f"metadata {METADATA_PREFIX}label_to_cat_id is malformed:")
    except SpecError as error:
        raise OnnxModelError(f"{source}: {error}") from None


def _subgraphs(node: Any, graph_types: tuple[int, int]) -> list:
    """The subgraphs a node holds (an ``If``'s branches, a ``Loop``'s body)."""
    out = []
    for attribute in node.attribute:
        if attribute.type == graph_types[0]:
            out.append(attribute.g)
        elif attribute.type == graph_types[1]:
            out.extend(attribute.graphs)
    return out


def check_graph(path: str | Path) -> None:
    """Refuse a model file before onnxruntime loads it: not ONNX, a node that iterates
    (``ITERATING``: a 10^12-step ``Loop`` cannot be interrupted) anywhere, at any depth of
    subgraphs (``If`` branches) and in local functions, or a tensor stored outside the file.
    ``tools/export.py`` writes none of these (its graph's only subgraphs are the branches of the
    ``If`` nodes of torchvision's ``batched_nms``: no boxes, or NMS on them; each runs once).

    Raises:
        OnnxModelError: one line naming ``path`` and the refused node.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf and onnx raise their own types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        raise OnnxModelError(f"{path} is not an ONNX model: {first}") from None
    external, kinds = onnx.TensorProto.EXTERNAL, onnx.AttributeProto
    stack = [("the graph", model.graph.node, model.graph.initializer)]
    stack += [(f"function {f.name[:40]!r}", f.node, ()) for f in model.functions]
    while stack:
        owner, nodes, initializers = stack.pop()
        if any(tensor.data_location == external for tensor in initializers) or any(
                a.type == kinds.TENSOR and a.t.data_location == external
                for node in nodes for a in node.attribute):
            raise OnnxModelError(f"{path}: {owner} keeps tensors in other files (external "
                                 f"data), which tools/export.py never writes: refused")
        for node in nodes:
            if node.op_type in ITERATING:
                raise OnnxModelError(
                    f"{path}: {owner} has a {node.op_type} node ({node.name[:40]!r}), which "
                    f"tools/export.py never writes (a loop could run without end): refused")
            stack += [(f"a subgraph of {node.op_type[:40]} node {node.name[:40]!r}", g.node,
                       g.initializer) for g in _subgraphs(node, (kinds.GRAPH, kinds.GRAPHS))]


def check_signature(session: Any, input_size: Sequence[int], source: str | Path) -> None:
    """The session's inputs and outputs are ``tools/export.py``'s, in order, with their element
    types and ranks, and the image input is ``input_size`` (H, W) as the metadata says.

    Raises:
        OnnxModelError: one line naming ``source`` and the first difference.
    """
    for kind, expected, args in (("inputs", INPUT_NAMES, session.get_inputs()),
                                 ("outputs", OUTPUT_NAMES, session.get_outputs())):
        names = [arg.name for arg in args]
        if names != list(expected):
            raise OnnxModelError(f"{source}: the graph's {kind} are {', '.join(names)[:120]}, "
                                 f"not {', '.join(expected)}; export it with tools/export.py")
        for arg in args:
            dtype, rank, fixed = _SIGNATURE[arg.name]
            shape = list(arg.shape or [])
            if arg.type != dtype or len(shape) != rank or any(
                    isinstance(shape[i], int) and shape[i] != n for i, n in fixed.items()):
                raise OnnxModelError(f"{source}: the graph's {arg.name} is {arg.type} "
                                     f"{shape}, not {dtype} of rank {rank}")
    image_hw = list(session.get_inputs()[0].shape)[2:]
    if image_hw != list(input_size):
        raise OnnxModelError(f"{source}: the graph's input is {image_hw}, its metadata says "
                             f"{list(input_size)}")


@dataclass
class OnnxPredictor:
    """An ONNX model plus its eval preprocessing; call it like ``Predictor``.

    Build it with ``from_file``. Attributes: ``session`` (onnxruntime.InferenceSession),
    ``transforms``, ``class_names``, ``input_size`` ((H, W) of the graph),
    ``batch_size``, ``label_to_cat_id``, ``info`` (model path and the file's metadata).
    """

    session: Any
    transforms: DetectionTransforms
    class_names: list[str]
    input_size: tuple[int, int]
    batch_size: int = 8
    label_to_cat_id: dict[int, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path, *, batch_size: int = 8,
                  num_threads: int | None = None) -> OnnxPredictor:
        """Load ``path`` (written by ``tools/export.py``) into an onnxruntime CPU session.

        Args:
            num_threads: onnxruntime's intra-op threads (None: its default, all cores).

        Raises:
            FileNotFoundError: no such file. OnnxModelError: not an exported detector, or its
                metadata is malformed (``check_metadata``).
        """
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        check_graph(path)  # before onnxruntime sees it
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types
            first = (str(error).strip().splitlines() or [""])[0][:160]
            raise OnnxModelError(f"onnxruntime cannot load {path}: {first}") from None
        meta = read_metadata(session, path)
        check_metadata(meta, path)
        check_signature(session, meta["input_size"], path)
        return cls(session=session,
                   transforms=build_transforms(train=False, min_size=meta.get("min_size", 600),
                                               max_size=meta.get("max_size", 1000)),
                   class_names=list(meta["class_names"]), input_size=tuple(meta["input_size"]),
                   batch_size=int(batch_size), label_to_cat_id=label_map(meta, path),
                   info={"model": str(path), **meta})

    __call__ = Predictor.__call__  # same batching over paths/arrays/PIL; calls predict_arrays

    def preprocess(self, images: Iterable[tuple[np.ndarray, str | None]]) -> tuple[dict, list]:
        """(RGB array, source) pairs -> the graph's inputs (``images [B,3,H,W]`` float32,
        ``image_sizes [B,2]`` int64) and per image (original size, (sy, sx) scale, source).

        Raises:
            InputError (a ValueError): a resized image larger than the graph's input size.
        """
        height, width = self.input_size
        arrays, sizes, per_image = [], [], []
        for array, source in images:
            sample = self.transforms(image=array, boxes=np.zeros((0, 4), np.float32),
                                     labels=np.zeros((0,), np.int64))
            image = sample["image"].numpy()
            h, w = image.shape[1:]
            if h > height or w > width:
                name = f"{source}: a" if source else "a"
                raise InputError(f"{name} {array.shape[0]} x {array.shape[1]} image resizes to "
                                 f"{h} x {w}, larger than the model's input {height} x {width}; "
                                 f"export with height=/width= that hold it")
            padded = np.zeros((3, height, width), np.float32)
            padded[:, :h, :w] = image
            arrays.append(padded)
            sizes.append((h, w))
            per_image.append((array.shape[:2], sample["scale"], source))
        feeds = {INPUT_NAMES[0]: np.stack(arrays),
                 INPUT_NAMES[1]: np.asarray(sizes, dtype=np.int64).reshape(-1, 2)}
        return feeds, per_image

    def predict_arrays(self, images: Iterable[tuple[np.ndarray, str | None]]) -> list[Detections]:
        """One onnxruntime run over (RGB array, source) pairs; see ``Predictor.__call__``."""
        feeds, per_image = self.preprocess(images)
        if not per_image:
            return []
        boxes, scores, labels, valid = self._run(feeds)
        results = []
        for i, (size, (sy, sx), source) in enumerate(per_image):
            keep = valid[i].astype(bool)
            label = labels[i][keep].astype(np.int64)
            if label.size and not 1 <= label.min() <= label.max() <= len(self.class_names):
                raise OnnxModelError(f"{self.info.get('model')}: the graph's labels exceed the "
                                     f"{len(self.class_names)} class names of its metadata")
            results.append(Detections(
                boxes=(boxes[i][keep] / np.array([sx, sy, sx, sy], np.float32)).astype(np.float32),
                scores=scores[i][keep].astype(np.float32), labels=label,
                class_names=[self.class_names[k - 1] for k in label.tolist()],
                image_size=(int(size[0]), int(size[1])), source=source))
        return results

    def _run(self, feeds: dict) -> list[np.ndarray]:
        """boxes [B, D, 4], scores, labels, valid [B, D] of one run, shapes checked (a graph
        whose declared outputs fit may still return other shapes)."""
        outputs = self.session.run(None, feeds)
        batch = len(feeds[INPUT_NAMES[0]])
        if len(outputs) == 4:
            boxes, scores, labels, valid = (np.asarray(o) for o in outputs)
            detections = boxes.shape[1] if boxes.ndim == 3 else -1
            if boxes.shape == (batch, detections, 4) and scores.shape == labels.shape \
                    == valid.shape == (batch, detections):
                return [boxes, scores, labels, valid]
        raise OnnxModelError(f"{self.info.get('model')}: the graph returned outputs of shapes "
                             f"{[np.shape(o) for o in outputs][:6]}, not boxes [B, D, 4] and "
                             f"scores, labels, valid [B, D]")
