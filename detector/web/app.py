"""The demo's Flask app: one model behind a JSON API, and the page that talks to it.

    >>> from detector.predict.predictor import Predictor
    >>> from detector.web import create_app
    >>> app = create_app(predictor=Predictor.from_checkpoint(path), min_score=0.05)
    >>> app.test_client().post("/api/detect", data={"image": open("cat.jpg", "rb")}).json

Routes:
    GET  /                 the page (templates/index.html, static/app.js, static/style.css)
    POST /api/detect       multipart field ``image`` (or a raw ``image/*`` body); optional form
                           field (or query parameter) ``min_score``
                           -> {detections, image, inference_ms, ...}
    GET  /api/model        classes (with their drawing colours), metrics, checkpoint, samples
    GET  /api/health       {"status": "ok"}
    GET  /samples/<i>      the i-th sample image, decoded and encoded again by the server (PNG, or
                           JPEG for a JPEG): never a file's own bytes or content type

Errors come back as JSON ``{"error": "..."}``: 400 for a missing or non-image upload, 413 for one
over ``max_upload_mb`` or over ``max_pixels`` (or a form field over Flask's
``MAX_FORM_MEMORY_SIZE``, or more than ``MAX_FORM_PARTS`` parts: the message says which limit).
Every response carries ``X-Content-Type-Options: nosniff``. The model answers one request at a
time (a lock); concurrent requests wait their turn, so each gets exactly what it would get alone.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from detector.data.report import DatasetError
from detector.predict.inputs import printable
from detector.predict.predictor import Predictor
from detector.visualize import class_color
from detector.web.samples import encode_sample
from detector.web.uploads import DEFAULT_MAX_PIXELS, UploadError, decode_upload

__all__ = ["DetectionService", "create_app"]

log = logging.getLogger("detector.web")


def _json_safe(value):
    """NaN/inf (COCO's "no such objects" AP) -> None, so that the JSON parses in a browser."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class DetectionService:
    """A predictor behind a lock: the model runs one image at a time, requests queue.
    ``min_score`` is the lowest score it returns."""

    def __init__(self, *, predictor: Predictor, min_score: float = 0.05) -> None:
        self.predictor = predictor
        self.min_score = float(min_score)
        self._lock = threading.Lock()

    def detect(self, image, *, min_score: float | None = None) -> dict:
        """Detections of one RGB image ``ndarray[H, W, 3]`` uint8, as the API's JSON body, down
        to ``min_score`` (never below the service's own); scores are compared as the JSON
        shows them (4 decimals), as the page's slider compares them."""
        queued = time.perf_counter()
        with self._lock:
            start = time.perf_counter()
            result = self.predictor.predict_arrays([(image, None)])[0]
            done = time.perf_counter()
        threshold = max(self.min_score, min_score or 0.0)
        height, width = result.image_size
        rows = result.above(threshold, as_shown=True).to_list(
            label_to_cat_id=self.predictor.label_to_cat_id)
        return {"detections": rows,
                "image": {"width": width, "height": height},
                "inference_ms": round(1000 * (done - start), 1),
                "queue_ms": round(1000 * (start - queued), 1),
                "min_score": threshold}

    def model_info(self) -> dict:
        """Classes (label, name, colour), checkpoint, iteration, dataset, metrics."""
        p = self.predictor
        classes = [{"label": label, "name": name,
                    "category_id": p.label_to_cat_id.get(label, label),
                    "color": "#{:02x}{:02x}{:02x}".format(*class_color(label))}
                   for label, name in enumerate(p.class_names, start=1)]
        return _json_safe({"classes": classes, "checkpoint": p.info.get("checkpoint"),
                           "iteration": p.info.get("iteration"), "dataset": p.info.get("dataset"),
                           "metrics": p.info.get("metrics"), "device": str(p.device),
                           "precision": p.precision,
                           "min_score": self.min_score})


def _upload_bytes() -> bytes:
    """The uploaded file: multipart field ``image``, or the raw body of an ``image/*`` request."""
    if "image" in request.files:
        return request.files["image"].read()
    if request.mimetype.startswith("image/"):
        return request.get_data()
    raise UploadError("no image: send the file in the multipart form field 'image'")


def _threshold_field() -> float | None:
    """The form field ``min_score``, else the query parameter (a raw-body request)."""
    raw = request.form.get("min_score", request.args.get("min_score"))
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise UploadError(f"min_score must be a number, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise UploadError(f"min_score must lie in [0, 1], got {value}")
    return value


def create_app(*, predictor: Predictor, max_upload_mb: float = 10.0,
               samples: Sequence[str | Path] = (), max_pixels: int = DEFAULT_MAX_PIXELS,
               min_score: float = 0.05, display_min_score: float = 0.5) -> Flask:
    """The demo app around one predictor.

    Args:
        predictor: answers /api/detect.
        min_score: the lowest score the API returns (a request may ask for a higher one):
            the page's slider filters above it without re-running the model.
        max_upload_mb: uploads above it get 413.
        samples: image files offered on the page (e.g. from ``sample_images``).
        max_pixels: images with more pixels (read from the header, before decoding) get 413.
        display_min_score: where the page's slider starts.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    service = DetectionService(predictor=predictor, min_score=min_score)
    sample_paths = [Path(p) for p in samples]
    app.extensions["detector"] = service

    @app.get("/")
    def index():
        return render_template("index.html")

    @app.get("/api/health")
    def health():
        return jsonify(status="ok")

    @app.get("/api/model")
    def model():
        samples_json = [{"name": printable(path.name), "url": f"/samples/{i}"}
                        for i, path in enumerate(sample_paths)]
        return jsonify({**service.model_info(), "samples": samples_json,
                        "display_min_score": display_min_score, "max_upload_mb": max_upload_mb,
                        "max_megapixels": max_pixels / 1e6})

    @app.get("/samples/<int:index>")
    def sample(index: int):
        if index >= len(sample_paths):
            return jsonify(error=f"no sample {index} (there are {len(sample_paths)})"), 404
        try:
            data, mimetype = encode_sample(sample_paths[index], max_pixels=max_pixels)
        except DatasetError as error:
            log.warning("sample %d not served: %s", index, printable(error))
            return jsonify(error=f"sample {index} is not an image that can be shown"), 404
        response = Response(data, mimetype=mimetype)
        response.cache_control.max_age = 3600
        return response

    @app.post("/api/detect")
    def detect():
        threshold = _threshold_field()
        image = decode_upload(_upload_bytes(), max_pixels=max_pixels)
        body = service.detect(image, min_score=threshold)
        log.info("detect %dx%d: %d detections, %.0f ms (+%.0f ms queued)", image.shape[1],
                 image.shape[0], len(body["detections"]), body["inference_ms"], body["queue_ms"])
        return jsonify(body)

    @app.after_request
    def no_sniffing(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    _register_errors(app, max_upload_mb)
    return app


def _too_large_message(max_upload_mb: float) -> str:
    """Which limit a 413 from Flask/Werkzeug hit: the request body (``MAX_CONTENT_LENGTH``), or,
    for a request within it, a form field over ``MAX_FORM_MEMORY_SIZE`` or more than
    ``MAX_FORM_PARTS`` parts."""
    length, limit = request.content_length, request.max_content_length
    if length is None or limit is None or length > limit:
        return f"upload too large: the limit is {max_upload_mb:g} MB"
    field, parts = request.max_form_memory_size, request.max_form_parts
    limits = " or ".join(text for value, text in (
        (field, f"a form field other than the image file is over {(field or 0) / 1000:g} kB"),
        (parts, f"the form has more than {parts} parts")) if value is not None)
    return (f"form too large: {limits or 'a form limit was hit'} (the request, "
            f"{length / 2**20:.2g} MB, is within the {max_upload_mb:g} MB limit on uploads); send "
            f"the image as the file field 'image'")


def _register_errors(app: Flask, max_upload_mb: float) -> None:
    @app.errorhandler(UploadError)
    def upload_error(error: UploadError):
        return jsonify(error=str(error)), error.status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error):
        return jsonify(error=_too_large_message(max_upload_mb)), 413

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return jsonify(error=f"{error.code} {error.name}: {error.description}"), error.code

    @app.errorhandler(Exception)
    def internal_error(error: Exception):
        log.exception("request failed")
        return jsonify(error=f"internal error: {type(error).__name__}: {error}"), 500
