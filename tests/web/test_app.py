"""The demo's JSON API through Flask's test client (detector/web/app.py)."""

from __future__ import annotations

import dataclasses
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from helpers.tiny_checkpoint import TINY_CLASSES

from detector.visualize import class_color
from detector.web import create_app


@pytest.fixture(scope="module")
def client(web_predictor):
    return create_app(predictor=web_predictor).test_client()


def _post(client, data: bytes, **fields):
    return client.post("/api/detect", data={"image": (io.BytesIO(data), "x.png"), **fields},
                       content_type="multipart/form-data")


def test_detect_gives_the_python_apis_detections(client, web_predictor, noise_image, png_bytes):
    rgb = noise_image(96, 160, seed=1)
    response = _post(client, png_bytes(rgb))
    assert response.status_code == 200, response.json
    body = response.json
    assert body["image"] == {"width": 160, "height": 96}
    assert body["inference_ms"] > 0 and body["min_score"] == pytest.approx(0.05)
    expected = [row for row in web_predictor(rgb).to_list(
        label_to_cat_id=web_predictor.label_to_cat_id) if row["score"] >= 0.05]
    assert len(expected) > 0  # the untrained model scores ~0.2 everywhere
    assert body["detections"] == expected
    for det in body["detections"]:
        x1, y1, x2, y2 = det["box_xyxy"]
        assert 0 <= x1 <= x2 <= 160 and 0 <= y1 <= y2 <= 96
        assert det["category"] == TINY_CLASSES[det["label"] - 1] and det["score"] >= 0.05


def test_a_raw_image_body_works_like_a_form_field(client, noise_image, png_bytes):
    data = png_bytes(noise_image(64, 64, seed=2))
    raw = client.post("/api/detect", data=data, content_type="image/png")
    assert raw.status_code == 200
    assert raw.json["detections"] == _post(client, data).json["detections"]


def test_a_raw_body_takes_min_score_from_the_query(client, noise_image, png_bytes):
    data = png_bytes(noise_image(64, 64, seed=2))
    scores = sorted(d["score"] for d in _post(client, data).json["detections"])
    cut = scores[len(scores) // 2]
    raw = client.post(f"/api/detect?min_score={cut}", data=data, content_type="image/png")
    assert raw.status_code == 200 and raw.json["min_score"] == cut
    assert all(d["score"] >= cut for d in raw.json["detections"])
    for bad in ("abc", "nan", "2"):
        raw = client.post(f"/api/detect?min_score={bad}", data=data,
                          content_type="image/png")
        assert raw.status_code == 400 and "min_score" in raw.json["error"], bad


def test_min_score_field_filters(client, noise_image, png_bytes):
    data = png_bytes(noise_image(64, 96, seed=3))
    everything = _post(client, data).json["detections"]
    scores = sorted(d["score"] for d in everything)
    for cut in (scores[0], scores[len(scores) // 2], scores[-1], scores[-1] + 1e-4):
        filtered = _post(client, data, min_score=str(cut)).json["detections"]
        assert filtered == [d for d in everything if d["score"] >= cut]
    assert filtered == []
    bad = _post(client, data, min_score="high")
    assert bad.status_code == 400 and "min_score" in bad.json["error"]


def test_the_apps_min_score_is_the_lowest_the_api_returns(web_predictor, noise_image,
                                                              png_bytes):
    data = png_bytes(noise_image(64, 96, seed=3))
    everything = _post(create_app(predictor=web_predictor).test_client(), data).json["detections"]
    scores = sorted(d["score"] for d in everything)
    floor = scores[len(scores) // 2]
    client = create_app(predictor=web_predictor, min_score=floor).test_client()
    assert client.get("/api/model").json["min_score"] == floor
    expected = [d for d in everything if d["score"] >= floor]
    assert 0 < len(expected) < len(everything) or floor == scores[0]
    for asked in ("", "0.0", str(floor)):  # asking for less than the floor gives the floor
        body = _post(client, data, min_score=asked).json
        assert body["detections"] == expected and body["min_score"] == floor


@pytest.mark.parametrize(("data", "message"), [
    (b"hello, this is a text file\n", "not an image"),
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image"),  # a PNG signature and nothing valid
])
def test_a_non_image_is_a_400_with_a_message(client, data, message):
    response = _post(client, data)
    assert response.status_code == 400
    assert message in response.json["error"]


def test_no_file_is_a_400(client):
    response = client.post("/api/detect", data={"other": "x"})
    assert response.status_code == 400 and "'image'" in response.json["error"]


def test_over_the_size_limit_is_a_413(web_predictor, noise_image, png_bytes):
    client = create_app(predictor=web_predictor, max_upload_mb=0.01).test_client()  # 10 KiB
    small = png_bytes(noise_image(16, 16, seed=4))
    big = png_bytes(np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8))
    assert len(small) < 10 * 1024 < len(big)
    assert _post(client, small).status_code == 200
    response = _post(client, big)
    assert response.status_code == 413
    assert "limit is 0.01 MB" in response.json["error"]


def test_too_many_pixels_is_refused_from_the_header(web_predictor, noise_image, png_bytes,
                                                     monkeypatch):
    client = create_app(predictor=web_predictor, max_pixels=100 * 100).test_client()
    data = png_bytes(noise_image(101, 100, seed=5))
    monkeypatch.setattr("detector.web.uploads.cv2.imdecode",
                        lambda *a, **k: pytest.fail("an over-size image must not be decoded"))
    response = _post(client, data)
    assert response.status_code == 413
    assert "100 x 101 pixels" in response.json["error"]


def test_concurrent_requests_get_their_own_results_one_model_call_at_a_time(
        web_predictor, noise_image, png_bytes, monkeypatch):
    """8 different images at once: each answer equals the one-by-one answer for that image, and
    the model is never entered by two requests at the same time."""
    app = create_app(predictor=web_predictor)
    images = [png_bytes(noise_image(48 + 8 * i, 64 + 16 * i, seed=10 + i)) for i in range(8)]
    one_by_one = [_post(app.test_client(), data).json for data in images]

    inside, most = [0], [0]
    guard = threading.Lock()
    original = web_predictor.predict_arrays

    def counting(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return original(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(web_predictor, "predict_arrays", counting)
    start = threading.Barrier(8)

    def request(data: bytes) -> dict:
        start.wait()
        return _post(app.test_client(), data).json

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(request, images))
    assert most[0] == 1
    for alone, concurrent in zip(one_by_one, together, strict=True):
        assert concurrent["image"] == alone["image"]
        assert concurrent["detections"] == alone["detections"]
    assert len({str(r["detections"]) for r in one_by_one}) == 8  # the images do differ


def test_model_describes_classes_colours_and_metrics(client, tiny_checkpoint):
    body = client.get("/api/model").json
    assert [c["name"] for c in body["classes"]] == TINY_CLASSES
    for cls in body["classes"]:
        assert cls["color"] == "#{:02x}{:02x}{:02x}".format(*class_color(cls["label"]))
    assert body["metrics"] == {"AP": 0.25, "AP50": 0.5}
    assert body["checkpoint"] == str(tiny_checkpoint) and body["iteration"] == 7
    assert body["samples"] == [] and body["display_min_score"] == 0.5


def test_nan_metrics_become_null(web_predictor):
    predictor = dataclasses.replace(web_predictor, info={"metrics": {"AP": float("nan"),
                                                                     "per_class": [float("inf")]}})
    response = create_app(predictor=predictor).test_client().get("/api/model")
    assert b"NaN" not in response.data and b"Infinity" not in response.data
    assert response.json["metrics"] == {"AP": None, "per_class": [None]}


def test_health_page_and_static_files(client):
    assert client.get("/api/health").json == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200
    for marker in (b'id="canvas"', b'id="file-input"', b'id="threshold"', b"/static/app.js",
                   b"/static/style.css", b'name="viewport"'):
        assert marker in page.data
    for name in ("app.js", "style.css"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and len(response.data) > 1000
        response.close()


def test_samples_are_listed_and_served(web_predictor, noise_image, png_bytes, tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"sample{i}.png")
        paths[-1].write_bytes(png_bytes(noise_image(32, 32, seed=20 + i)))
    client = create_app(predictor=web_predictor, samples=paths).test_client()
    listed = client.get("/api/model").json["samples"]
    assert listed == [{"name": "sample0.png", "url": "/samples/0"},
                      {"name": "sample1.png", "url": "/samples/1"}]
    served = client.get("/samples/1")  # the pixels, encoded again by the server
    assert served.status_code == 200 and served.mimetype == "image/png"
    decoded = cv2.imdecode(np.frombuffer(served.data, np.uint8), cv2.IMREAD_COLOR)
    assert (decoded == cv2.imread(str(paths[1]))).all()
    served.close()
    missing = client.get("/samples/2")
    assert missing.status_code == 404 and "no sample 2" in missing.json["error"]


def test_unknown_routes_and_methods_answer_json(client):
    assert client.get("/api/nothing").status_code == 404
    assert "error" in client.get("/api/nothing").json
    wrong = client.get("/api/detect")
    assert wrong.status_code == 405 and "error" in wrong.json
