"""Shared pytest fixtures: real-data locations (skipped when absent) and device selection."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must not go online

import pytest
import torch

# tests/helpers/ (the package ``helpers``: tests/ is on sys.path, pyproject.toml's pythonpath):
# its asserts report their values as a test module's do; registered before any of it is imported
pytest.register_assert_rewrite("helpers")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_VARIABLE = "DETECTOR_SHARED_DATA"  # `make test` sets it when ../shared/data exists
SHARED_DATA = Path(os.environ.get(SHARED_DATA_VARIABLE, PROJECT_ROOT.parent / "shared" / "data"))


def shared_data_absent_reason(path: Path, environ=os.environ) -> str:
    """Why a real-data test skips: ``path`` (``<shared data>/<name>``) is not a folder."""
    if SHARED_DATA_VARIABLE in environ:
        return (f"real data {path} is absent: {SHARED_DATA_VARIABLE}={environ[SHARED_DATA_VARIABLE]}"
                f" holds no {path.name}/")
    return (f"real data {path} is absent: outside the development layout (../shared/data beside "
            f"the checkout) set {SHARED_DATA_VARIABLE} to the folder that holds {path.name}/")


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(shared_data_absent_reason(path))
    return path


# Unit tests use small tensors, for which thread start-up costs more than it saves on a 2-core
# machine; subprocess tests (real training runs) keep torch's default.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def coco_tiny_root() -> Path:
    """Root of ../shared/data/coco_tiny (80 train + 80 val COCO images); skips when absent."""
    return _shared("coco_tiny")


@pytest.fixture(scope="session")
def raccoon_root() -> Path:
    """Root of ../shared/data/raccoon (200 VOC-XML images, 1 class); skips when absent."""
    return _shared("raccoon")


@pytest.fixture
def cuda_device() -> torch.device:
    """A CUDA device, or skip: CI has no GPU."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device("cuda")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="CUDA is not available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """``<run>/checkpoints/final.pth`` of a small VGG16-BN model with the shapes classes (see
    ``tests/helpers/tiny_checkpoint.py``)."""
    from helpers.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("run") / "checkpoints" / "final.pth")
