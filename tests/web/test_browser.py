"""The demo page in a real headless browser: Debian's chromium driven by Selenium, against the
real server (waitress on a free port of 127.0.0.1). Skipped without chromium + chromedriver
(``make test-browser`` installs them). Nothing is downloaded: the driver's path is given, so
Selenium Manager never runs.

Checks: uploading an image fills the detections table and draws boxes (pixels of the class
colours appear on the canvas, and none at threshold 1); the slider filters without another
request; a phone-width window has no horizontal scrolling; the camera mode (Chromium's fake
camera) sends frames and shows a frame rate. Screenshots go to the test's tmp dir.

To make the README's screenshot from a trained model:
    DETECTOR_DEMO_CHECKPOINT=outputs/.../final.pth DETECTOR_DEMO_SCREENSHOT=docs/demo.png \
        python -m pytest tests/web/test_browser.py -m browser -k upload
(``DETECTOR_DEMO_THRESHOLD`` moves the page's slider from its 0.5.)
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest

from detector.predict.predictor import Predictor
from detector.visualize import class_color
from detector.web import create_app, make_server, sample_images, server_url

pytestmark = pytest.mark.browser

WAIT_S = 120  # generous: the shared CI machine may be busy
CLASS_PIXELS_JS = """
const colours = new Set(arguments[0]);
const canvas = document.getElementById("canvas");
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let count = 0;
for (let i = 0; i < data.length; i += 4) {
  if (colours.has((data[i] << 16) | (data[i + 1] << 8) | data[i + 2])) count += 1;
}
return count;
"""
SET_THRESHOLD_JS = """
const slider = document.getElementById("threshold");
slider.value = arguments[0];
slider.dispatchEvent(new Event("input"));
"""


def _browser() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium + chromedriver on PATH (make test-browser installs Debian's)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    return chromium, driver


@pytest.fixture(scope="module")
def demo(tiny_checkpoint, tmp_path_factory, noise_image, png_bytes):
    """(url, predictor, display threshold) of a running server; a trained model when
    DETECTOR_DEMO_CHECKPOINT names one, else the tiny untrained one (scores ~0.2)."""
    _browser()
    trained = os.environ.get("DETECTOR_DEMO_CHECKPOINT")
    predictor = Predictor.from_checkpoint(trained or tiny_checkpoint, device="cpu", batch_size=1)
    if trained:
        from detector.checkpoint import load_checkpoint

        samples = sample_images(load_checkpoint(trained)["config"]["dataset"], count=6)
    else:
        samples = [tmp_path_factory.mktemp("samples") / "noise.png"]
        samples[0].write_bytes(png_bytes(noise_image(120, 160, seed=7)))
    threshold = float(os.environ.get("DETECTOR_DEMO_THRESHOLD", 0.5)) if trained else 0.1
    server = make_server(create_app(predictor=predictor, samples=samples,
                                    display_min_score=threshold), port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield server_url(server), predictor, threshold, samples
    server.close()
    thread.join(30)


def _chrome(*extra_args: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser()
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--disable-gpu", *extra_args):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def _wait(browser, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S, poll_frequency=0.2).until(
        lambda b: condition(b), message=message)


def _rows(browser) -> int:
    return browser.execute_script("return document.querySelectorAll('#detections tbody tr').length")


def _class_pixels(browser, predictor) -> int:
    colours = [(r << 16) | (g << 8) | b for r, g, b in
               (class_color(i + 1) for i in range(len(predictor.class_names)))]
    return browser.execute_script(CLASS_PIXELS_JS, colours)


def _api_detections(url: str, data: bytes) -> list[dict]:
    request = urllib.request.Request(url + "api/detect", data=data,
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        return json.load(response)["detections"]


def _no_console_errors(browser) -> None:
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_upload_draws_boxes_fills_the_table_and_the_slider_filters(demo, tmp_path, noise_image,
                                                                    png_bytes):
    url, predictor, threshold, samples = demo
    image_path = Path(samples[0]) if os.environ.get("DETECTOR_DEMO_CHECKPOINT") else (
        tmp_path / "upload.png")
    if not image_path.exists():
        image_path.write_bytes(png_bytes(noise_image(240, 320, seed=3)))
    expected = [d for d in _api_detections(url, image_path.read_bytes())
                if d["score"] >= threshold]
    assert expected, "the model finds nothing above the page's threshold: nothing to check"
    browser = _chrome()
    try:
        browser.get(url)
        _wait(browser, lambda b: b.execute_script("return document.body.dataset.ready"),
              "the page did not load the model description")
        assert browser.execute_script("return document.querySelectorAll('#samples img').length") \
            == len(samples)
        browser.find_element("id", "file-input").send_keys(str(image_path.resolve()))
        _wait(browser, lambda b: _rows(b) > 0, "no detections in the table")
        assert _rows(browser) == len(expected)
        drawn = browser.find_element("id", "canvas").get_attribute("data-boxes")
        assert drawn == str(len(expected))
        assert _class_pixels(browser, predictor) > 50  # box outlines and labels in class colours
        first_row = browser.find_element("css selector", "#detections tbody tr").text
        assert first_row.split()[0] == expected[0]["category"]
        browser.save_screenshot(str(tmp_path / "demo.png"))
        if os.environ.get("DETECTOR_DEMO_SCREENSHOT"):  # 256 colours: a small file for docs/
            from PIL import Image

            with Image.open(tmp_path / "demo.png") as shot:
                shot.convert("RGB").quantize(256).save(os.environ["DETECTOR_DEMO_SCREENSHOT"],
                                                       optimize=True)

        browser.execute_script(SET_THRESHOLD_JS, "1")  # nothing scores 1: all boxes go
        assert _rows(browser) == 0 and _class_pixels(browser, predictor) == 0
        browser.execute_script(SET_THRESHOLD_JS, str(threshold))
        assert _rows(browser) == len(expected) and _class_pixels(browser, predictor) > 50

        browser.set_window_size(375, 812)  # a phone's width
        _wait(browser, lambda b: b.execute_script("return window.innerWidth") <= 400,
              "the window did not shrink")
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{overflow} px of horizontal scrolling at phone width"
        canvas_right = browser.execute_script(
            "return document.getElementById('canvas').getBoundingClientRect().right")
        assert canvas_right <= browser.execute_script("return window.innerWidth")
        browser.save_screenshot(str(tmp_path / "demo_phone.png"))
        _no_console_errors(browser)
    finally:
        browser.quit()


def test_camera_mode_sends_frames_and_draws_live(demo, tmp_path):
    url, predictor, _, _ = demo
    browser = _chrome("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    try:
        browser.get(url)
        _wait(browser, lambda b: b.execute_script("return document.body.dataset.ready"),
              "the page did not load the model description")
        browser.find_element("id", "camera-button").click()
        _wait(browser, lambda b: int(b.find_element("id", "canvas").get_attribute("data-frames"))
              >= 2, "fewer than 2 camera frames came back from /api/detect")
        fps = browser.find_element("id", "fps").text
        assert fps.endswith(" fps") and float(fps.split()[0]) > 0
        _wait(browser, lambda b: _class_pixels(b, predictor) > 0, "no boxes over the video")
        assert _rows(browser) > 0
        browser.save_screenshot(str(tmp_path / "camera.png"))
        browser.find_element("id", "camera-button").click()  # stop
        assert browser.find_element("id", "fps").text == ""
        _no_console_errors(browser)
    finally:
        browser.quit()
