"""Fixtures of the web demo's tests: a predictor on the tiny checkpoint and test images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detector.predict.predictor import Predictor


@pytest.fixture(scope="session")
def web_predictor(tiny_checkpoint) -> Predictor:
    """The tiny untrained model; its scores (~1 / (K + 1)) clear the API's 0.05 threshold."""
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", batch_size=1)


def _noise_image(height: int, width: int, seed: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] of values in 60..190: no pixel can equal a class colour (which has a
    255 channel), so colours found on the page's canvas come from drawn boxes."""
    rng = np.random.default_rng(seed)
    size = (max(2, height // 16), max(2, width // 16), 3)
    coarse = rng.integers(60, 191, size=size, dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


def _png_bytes(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="session")
def noise_image():
    """``noise_image(height, width, seed)`` -> RGB uint8 [H, W, 3] (see ``_noise_image``)."""
    return _noise_image


@pytest.fixture(scope="session")
def png_bytes():
    """``png_bytes(rgb)`` -> the bytes of a PNG file of that RGB image."""
    return _png_bytes
