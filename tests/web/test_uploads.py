"""Uploaded bytes -> RGB array (detector/web/uploads.py): formats, EXIF rotation, bombs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from detector.web.uploads import UploadError, decode_upload, image_header_size, sniff_format


def _encode(rgb: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with one tiny IDAT: what a
    decompression bomb looks like before decoding."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_png_round_trip_is_exact_and_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    decoded = decode_upload(_encode(rgb, "PNG"))
    assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, rgb)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_other_modes_become_three_channels(mode):
    rgb = np.random.default_rng(1).integers(0, 256, (9, 5, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = decode_upload(buffer.getvalue())
    np.testing.assert_array_equal(decoded, np.asarray(image.convert("RGB")))


def test_gif_goes_through_pillow():
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, 4:] = (255, 0, 0)
    decoded = decode_upload(_encode(rgb, "GIF"))
    np.testing.assert_array_equal(decoded, rgb)


def test_exif_orientation_is_applied_like_a_browser():
    """Orientation 6 (rotate 90 degrees clockwise to view): a stored 40 x 20 (w x h) JPEG shows
    as 20 x 40, with the stored left column at the top."""
    rgb = np.full((20, 40, 3), 40, np.uint8)
    rgb[:, :8] = 230  # bright stripe on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_upload(_encode(rgb, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.shape == (40, 20, 3)
    assert decoded[:8].mean() > 200 and decoded[12:].mean() < 80


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"%PDF-1.4 not an image", bytes(range(256))])
def test_non_images_are_400(data):
    with pytest.raises(UploadError) as info:
        decode_upload(data)
    assert info.value.status == 400


@pytest.mark.parametrize(("width", "height"), [(8000, 6000), (60000, 60000)])
def test_bombs_are_refused_from_the_header_before_decoding(width, height, monkeypatch):
    data = _png_header_only(width, height)
    assert len(data) < 200
    if width * height < 1e8:  # Pillow itself refuses to open the larger one
        assert image_header_size(data)[:2] == (width, height)
    monkeypatch.setattr("detector.web.uploads.cv2.imdecode",
                        lambda *a, **k: pytest.fail("a bomb must not be decoded"))
    with pytest.raises(UploadError) as info:
        decode_upload(data, max_pixels=40_000_000)
    assert info.value.status == 413
    assert "pixels" in str(info.value) and "\n" not in str(info.value)


def test_the_limit_is_inclusive():
    rgb = np.zeros((10, 10, 3), np.uint8)
    assert decode_upload(_encode(rgb, "PNG"), max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(UploadError, match="10 x 10 pixels"):
        decode_upload(_encode(rgb, "PNG"), max_pixels=99)


def _ico() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="ICO")
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "ICO", "PPM", "EPS"])
def test_formats_outside_the_six_named_are_refused_unparsed(fmt, monkeypatch):
    if fmt == "ICO":
        data = _ico()
    elif fmt == "EPS":  # Pillow hands EPS to Ghostscript: it must never get that far
        data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    else:
        data = _encode(np.zeros((8, 8, 3), np.uint8), fmt)
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or 1 / 0)
    with pytest.raises(UploadError, match="JPEG, PNG, BMP, WebP, GIF or TIFF") as info:
        decode_upload(data)
    assert info.value.status == 400 and opened == []


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF"])
def test_the_six_named_formats_are_accepted(fmt):
    rgb = np.full((12, 20, 3), 200, np.uint8)
    assert sniff_format(_encode(rgb, fmt)) == fmt
    assert decode_upload(_encode(rgb, fmt)).shape == (12, 20, 3)
