"""Fixtures of the engine tests: a per-module generated shapes root (the tiny stride-16 model
they train is ``helpers.tiny_training``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    """Where a test module's small generated shapes set lives."""
    return tmp_path_factory.mktemp("data") / "shapes"
