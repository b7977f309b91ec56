"""The real-data fixtures of tests/conftest.py skip with a reason that names the fix, and
`make test` points them at ../shared/data when that folder exists."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.load_file import load_file

PROJECT_ROOT = Path(__file__).resolve().parents[1]
conftest = load_file(PROJECT_ROOT / "tests" / "conftest.py", "detector_tests_root_conftest")


def test_absent_real_data_skips_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.delenv("DETECTOR_SHARED_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest._shared("coco_tiny")
    reason = str(skipped.value)
    assert str(tmp_path / "coco_tiny") in reason and "../shared/data" in reason
    assert "set DETECTOR_SHARED_DATA to the folder that holds coco_tiny/" in reason
    monkeypatch.setenv("DETECTOR_SHARED_DATA", str(tmp_path))
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest._shared("raccoon")
    assert f"DETECTOR_SHARED_DATA={tmp_path} holds no raccoon/" in str(skipped.value)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(("shared_exists", "preset", "expected"), [
    (True, None, "{shared}"), (False, None, ""), (True, "/elsewhere", "/elsewhere"),
])
def test_make_exports_the_shared_data_folder_when_it_exists(tmp_path, shared_exists, preset,
                                                             expected):
    """What `make test`'s commands see, in a copy of the development layout: <tmp>/checkout
    (the Makefile) beside <tmp>/shared/data; a value the user set is kept."""
    checkout, shared = tmp_path / "checkout", tmp_path / "shared" / "data"
    checkout.mkdir()
    shutil.copy(PROJECT_ROOT / "Makefile", checkout / "Makefile")
    if shared_exists:
        shared.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "DETECTOR_SHARED_DATA" and
           not k.startswith("MAKE")}
    if preset is not None:
        env["DETECTOR_SHARED_DATA"] = preset
    show = 'show: ; @echo "[$$DETECTOR_SHARED_DATA]"'
    done = subprocess.run(["make", "--no-print-directory", "-C", str(tmp_path / "checkout"),
                           "--eval", show, "show"], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[" + expected.format(shared=shared) + "]"
