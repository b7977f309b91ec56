"""Run an exported model (``tools/export.py``) with onnxruntime, behind ``Predictor``'s interface.

    >>> from detector.predict.onnx_predictor import OnnxPredictor
    >>> predictor = OnnxPredictor.from_file("final.onnx")
    >>> result = predictor("street.jpg")        # the same Detections as Predictor returns
    >>> confident = result.above(0.5)

Images go through the same eval preprocessing as ``Predictor`` (the run's resize, ImageNet
normalisation), read from the file's metadata, and are zero-padded to the graph's fixed input
size; the network itself runs in onnxruntime (CPU), not PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.data.transforms import DetectionTransforms, build_transforms
from detector.errors import UserError
from detector.predict.onnx_export import INPUT_NAMES, METADATA_PREFIX
from detector.predict.predictor import Detections, Predictor

__all__ = ["OnnxModelError", "OnnxPredictor", "check_metadata", "read_metadata"]


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


def _is_int(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_metadata(meta: dict, source: str | Path = "the model") -> None:
    """Refuse metadata that ``tools/export.py`` would not write: the keys ``OnnxPredictor``
    reads must have their types and ranges (class_names: non-empty strings; input_size: two
    positive integers; min_size: a positive integer or null; max_size: a positive integer;
    label_to_cat_id: integer labels to integer ids; iteration: an integer or null).

    Raises:
        OnnxModelError: one line naming ``source`` and the first bad key.
    """
    if "class_names" not in meta or "input_size" not in meta:
        raise OnnxModelError(f"{source} has no detector metadata; export it with tools/export.py")
    names, size = meta["class_names"], meta["input_size"]
    cat_ids = meta.get("label_to_cat_id", {})
    checks = {
        "class_names": isinstance(names, list) and bool(names)
        and all(isinstance(name, str) for name in names),
        "input_size": isinstance(size, list) and len(size) == 2 and all(map(_is_int, size)),
        "min_size": meta.get("min_size") is None or _is_int(meta["min_size"]),
        "max_size": _is_int(meta.get("max_size", 1000)),
        "label_to_cat_id": isinstance(cat_ids, dict) and all(
            str(k).isdigit() and _is_int(v, low=0) for k, v in cat_ids.items()),
        "iteration": meta.get("iteration") is None or _is_int(meta["iteration"], low=0),
    }
    for key, ok in checks.items():
        if not ok:
            raise OnnxModelError(f"{source}: metadata {METADATA_PREFIX}{key} is malformed: "
                                 f"{json.dumps(meta.get(key))[:80]}")


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
        return cls(session=session,
                   transforms=build_transforms(train=False, min_size=meta.get("min_size", 600),
                                               max_size=meta.get("max_size", 1000)),
                   class_names=list(meta["class_names"]), input_size=tuple(meta["input_size"]),
                   batch_size=int(batch_size),
                   label_to_cat_id={int(k): int(v)
                                    for k, v in meta.get("label_to_cat_id", {}).items()},
                   info={"model": str(path), **meta})

    __call__ = Predictor.__call__  # same batching over paths/arrays/PIL; calls predict_arrays

    def preprocess(self, images: Iterable[tuple[np.ndarray, str | None]]) -> tuple[dict, list]:
        """(RGB array, source) pairs -> the graph's inputs (``images [B,3,H,W]`` float32,
        ``image_sizes [B,2]`` int64) and per image (original size, (sy, sx) scale, source).

        Raises:
            ValueError: a resized image larger than the graph's input size.
        """
        height, width = self.input_size
        arrays, sizes, per_image = [], [], []
        for array, source in images:
            sample = self.transforms(image=array, boxes=np.zeros((0, 4), np.float32),
                                     labels=np.zeros((0,), np.int64))
            image = sample["image"].numpy()
            h, w = image.shape[1:]
            if h > height or w > width:
                raise ValueError(f"a {array.shape[0]} x {array.shape[1]} image resizes to {h} x {w},"
                                 f" larger than the model's input {height} x {width}; export "
                                 f"with height=/width= that hold it")
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
        boxes, scores, labels, valid = self.session.run(None, feeds)
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
