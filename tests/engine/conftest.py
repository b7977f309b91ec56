"""Fixtures of the engine tests: the tiny stride-16 model of ``tiny_training.py`` (importable as
``tiny_training`` from the test modules) and a per-module generated shapes root."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _load_tiny_training() -> None:
    if "tiny_training" in sys.modules:
        return
    path = Path(__file__).with_name("tiny_training.py")
    spec = importlib.util.spec_from_file_location("tiny_training", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_training"] = module
    spec.loader.exec_module(module)


_load_tiny_training()


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    """Where a test module's small generated shapes set lives."""
    return tmp_path_factory.mktemp("data") / "shapes"
