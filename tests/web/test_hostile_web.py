"""The web demo against hostile files and requests: a checkpoint's "sample images" are served only
as images the server decoded and encoded again (never a file's own bytes or content type), a RIFF
file that is not WebP never reaches Pillow, a form limit is named as such, names are escaped."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from detector.web import create_app
from detector.web.uploads import UploadError, decode_upload, sniff_format

HTML = b"<!doctype html><html><body><script>fetch('/api/model')</script>secret</body></html>"
SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8">'
       b"<script>alert(document.domain)</script></svg>")


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring ``width`` x ``height`` RGB: a few dozen bytes that
    decode (were they decoded) to width * height * 3 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 16)


@pytest.fixture
def sample_app(web_predictor, noise_image, png_bytes, tmp_path):
    """An app whose samples are: an HTML page, an SVG, a text file, a PNG with HTML appended (a
    polyglot), a JPEG, a PNG declaring 20000 x 20000 pixels, a name with a terminal escape."""
    files = {"page.html": HTML, "logo.svg": SVG, "secret.txt": b"password=hunter2",
             "polyglot.png": png_bytes(noise_image(24, 32, seed=1)) + HTML,
             "bomb.png": _png_header(20000, 20000),
             "evil\x1b[2J\n.png": png_bytes(noise_image(8, 8, seed=3))}
    ok, jpeg = cv2.imencode(".jpg", noise_image(16, 24, seed=2))
    files["photo.jpg"] = jpeg.tobytes()
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    app = create_app(predictor=web_predictor, samples=paths)
    return app.test_client(), {p.name: i for i, p in enumerate(paths)}, paths


@pytest.mark.parametrize("name", ["page.html", "logo.svg", "secret.txt", "bomb.png"])
def test_a_sample_that_is_no_image_is_never_served(sample_app, name, monkeypatch):
    client, index, paths = sample_app
    if name == "bomb.png":  # refused from its header: never decoded
        monkeypatch.setattr("detector.predict.image_files.cv2.imdecode",
                            lambda *a, **k: pytest.fail("a bomb must not be decoded"))
    response = client.get(f"/samples/{index[name]}")
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert "not an image that can be shown" in response.json["error"]
    assert paths[index[name]].read_bytes()[:20] not in response.data
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_sample_image_is_served_as_pixels_encoded_again(sample_app):
    """The polyglot's appended HTML is gone: the PNG is the server's own, with the same pixels;
    a JPEG sample comes back as a JPEG."""
    client, index, paths = sample_app
    response = client.get(f"/samples/{index['polyglot.png']}")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert b"<script>" not in response.data and response.data != paths[index["polyglot.png"]]
    served = cv2.imdecode(np.frombuffer(response.data, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(paths[index["polyglot.png"]]))
    assert served.shape == (24, 32, 3) and (served == original).all()
    photo = client.get(f"/samples/{index['photo.jpg']}")
    assert photo.status_code == 200 and photo.mimetype == "image/jpeg"
    assert photo.data.startswith(b"\xff\xd8\xff")


def test_sample_names_are_listed_escaped(sample_app):
    client, _, _ = sample_app
    names = [sample["name"] for sample in client.get("/api/model").json["samples"]]
    assert "evil\\x1b[2J\\n.png" in names
    assert not any("\x1b" in name or "\n" in name for name in names)


def _riff(kind: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 28) + kind + b"\0" * 24


@pytest.mark.parametrize("kind", [b"AVI ", b"WAVE", b"WEBQ"])
def test_a_riff_file_that_is_not_webp_never_reaches_pillow(kind, monkeypatch):
    """Only ``WEBP`` at offset 8 makes a RIFF file a WebP: an AVI or a WAV is refused before any
    Pillow plugin parses it (remove the offset-8 check and this fails)."""
    data = _riff(kind)
    assert sniff_format(data) is None
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or 1 / 0)
    with pytest.raises(UploadError, match="JPEG, PNG, BMP, WebP, GIF or TIFF") as info:
        decode_upload(data)
    assert info.value.status == 400 and opened == []


def test_a_real_webp_still_passes_the_riff_check():
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 10, 3), 90, np.uint8)).save(buffer, format="WEBP")
    assert buffer.getvalue()[8:12] == b"WEBP" and sniff_format(buffer.getvalue()) == "WEBP"
    assert decode_upload(buffer.getvalue()).shape == (6, 10, 3)


def test_a_form_field_over_flasks_limit_is_named_as_such(web_predictor, noise_image, png_bytes):
    """A 0.6 MB request within the 10 MB upload limit, with a 600 kB text field: the form limit
    (500 kB per field) refused it, and the message says so, not "the limit is 10 MB"."""
    client = create_app(predictor=web_predictor).test_client()
    image = (io.BytesIO(png_bytes(noise_image(16, 16, seed=4))), "a.png")
    response = client.post("/api/detect", data={"image": image, "min_score": "0" * 600_000},
                           content_type="multipart/form-data")
    assert response.status_code == 413
    error = response.json["error"]
    assert "form field" in error and "500 kB" in error and "within the 10 MB limit" in error
    assert "the limit is 10 MB" not in error and "\n" not in error


def test_a_body_over_the_upload_limit_still_names_that_limit(web_predictor):
    client = create_app(predictor=web_predictor, max_upload_mb=0.01).test_client()
    response = client.post("/api/detect", data=b"\0" * 20_000, content_type="image/png")
    assert response.status_code == 413 and "the limit is 0.01 MB" in response.json["error"]
