"""tools/serve.py: user errors are one line (exit 2); the real server answers over HTTP."""

from __future__ import annotations

import errno
import io
import json
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from detector.errors import OptionError
from detector_cli import serve
from detector_cli.checks import ConfigError, check_overrides, check_serve_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return compose("serve", overrides=list(overrides))


@pytest.mark.parametrize(("override", "message"), [
    ("port=70000", "port must be an integer in 0..65535"),
    ("max_upload_mb=0", "max_upload_mb must be a positive number"),
    ("min_score=1.5", "min_score must lie in [0, 1]"),
    ("device=gpu", "device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_values_are_one_line_config_errors(override, message):
    """ConfigErrors, or for device the OptionError of the library's rule (detector.runtime)."""
    with pytest.raises((ConfigError, OptionError),
                       match=message.replace("[", r"\[").replace("]", r"\]")):
        check_serve_config(_cfg(override))


def test_an_unknown_option_is_one_line():
    with pytest.raises(ConfigError, match="Could not override 'prot'") as info:
        check_overrides(["prot=80"], config_name="serve")
    assert "\n" not in str(info.value)


def test_no_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="make demo"):
        serve.resolve_checkpoint(_cfg(f"outputs_root={tmp_path}"))


def test_a_port_in_use_is_a_config_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: the port is in use"):
            serve.bind(object(), _cfg(f"port={port}"))


def test_serves_the_checkpoint_over_http(tiny_checkpoint, monkeypatch):
    """run() end to end on a free port, stopped through the server it built."""
    built = {}
    real_bind = serve.bind

    def bind_and_keep(app, cfg):
        built["server"] = real_bind(app, cfg)
        built["ready"].set()
        return built["server"]

    built["ready"] = threading.Event()
    monkeypatch.setattr(serve, "bind", bind_and_keep)
    cfg = _cfg(f"checkpoint={tiny_checkpoint}", "port=0", "device=cpu", "precision=fp32")
    failures = []

    def serve_until_closed():  # closing the server from this thread may end its select() with
        try:                   # EBADF in that one: the stop itself, not a failure of run()
            serve.run(cfg)
        except OSError as error:
            if not (built.get("closed") and error.errno == errno.EBADF):
                failures.append(error)
        except Exception as error:  # noqa: BLE001 - reported below, in the test's own thread
            failures.append(error)

    thread = threading.Thread(target=serve_until_closed, daemon=True)
    thread.start()
    assert built["ready"].wait(120)
    url = serve.server_url(built["server"])
    try:
        with urllib.request.urlopen(url + "api/health", timeout=60) as response:
            assert json.load(response) == {"status": "ok"}
        with urllib.request.urlopen(url + "api/model", timeout=60) as response:
            assert json.load(response)["checkpoint"] == str(tiny_checkpoint)
    finally:
        built["closed"] = True
        built["server"].close()
        thread.join(30)
    assert not thread.is_alive() and not failures, failures


class _Built(Exception):
    """Raised by the stand-in bind() to stop run() once it has built the app."""


def _png(width: int, height: int, *, size: int | None = None) -> bytes:
    """A grey PNG, padded with trailing bytes (which decoders ignore) to exactly ``size``."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    return data if size is None else data + b"\0" * (size - len(data))


def test_max_upload_mb_and_max_megapixels_reach_the_app(tiny_checkpoint, monkeypatch):
    """Both limits as typed on the command line, inclusive: 1/64 MB = 16384 bytes (MiB, as the
    browser's file sizes: a 16384-byte upload passes, 16385 bytes get 413), and 0.0001
    megapixels = 100 pixels (10 x 10 passes, 101 x 1 gets 413)."""
    def keep_app(app, cfg):
        monkeypatch.setattr(serve, "built_app", app, raising=False)
        raise _Built

    monkeypatch.setattr(serve, "bind", keep_app)
    cfg = _cfg(f"checkpoint={tiny_checkpoint}", "device=cpu", "precision=fp32", "num_samples=0",
               "max_upload_mb=0.015625", "max_megapixels=0.0001")
    with pytest.raises(_Built):
        serve.run(cfg)
    client = serve.built_app.test_client()
    info = client.get("/api/model").json
    assert (info["max_upload_mb"], info["max_megapixels"]) == (0.015625, 0.0001)

    def post(data: bytes):
        return client.post("/api/detect", data=data, content_type="image/png")

    assert post(_png(10, 10, size=16384)).status_code == 200
    assert post(_png(10, 10, size=16385)).status_code == 413
    assert post(_png(101, 1)).status_code == 413
    assert post(_png(100, 1)).status_code == 200


def test_megapixels_become_whole_pixels_without_float_truncation():
    assert serve.megapixels_to_pixels(4.1) == 4_100_000  # 4.1 * 1e6 = 4099999.9999999995
    assert serve.megapixels_to_pixels(0.0001) == 100 and serve.megapixels_to_pixels(40) == 40e6
    assert serve.megapixels_to_pixels(1.0000005) == 1_000_000  # part of a pixel: not one more


@pytest.mark.slow
def test_missing_checkpoint_exits_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "tools" / "serve.py"),
                           f"checkpoint={tmp_path / 'nope.pth'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"error: checkpoint {tmp_path / 'nope.pth'} does not exist\n"
