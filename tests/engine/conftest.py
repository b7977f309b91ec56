"""Fixtures of the engine tests: the tiny stride-16 model of ``tiny_training.py`` (importable as
``tiny_training`` from the test modules) and a per-module generated shapes root."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from load_file import load_file

if "tiny_training" not in sys.modules:
    load_file(Path(__file__).with_name("tiny_training.py"), "tiny_training", register=True)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    """Where a test module's small generated shapes set lives."""
    return tmp_path_factory.mktemp("data") / "shapes"
