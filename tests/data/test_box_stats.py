"""model_input_boxes: a dataset's boxes at the model's input scale, from the records only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detector.data.box_stats import model_input_boxes, model_input_sizes
from detector.data.dataset import ImageRecord
from detector.data.transforms import build_transforms


def _record(index: int, height: int, width: int, boxes, labels) -> ImageRecord:
    return ImageRecord(index, Path(f"/nonexistent/{index}.png"), height, width,
                       np.asarray(boxes, np.float32).reshape(-1, 4),
                       np.asarray(labels, np.int64).reshape(-1))


def _dataset(records):
    return SimpleNamespace(records=records, class_names=["a", "b"])


def test_hand_computed_scaling():
    # 200 x 100 (h x w) with min 50 / max 80: shorter side 100 -> 50 would make 100, over 80,
    # so the scale is 80 / 200 = 0.4: 80 x 40. 60 x 60 -> 50 x 50 (scale 5/6).
    ds = _dataset([
        _record(1, 200, 100, [[10, 20, 60, 120], [0, 0, 100, 200]], [1, 2]),
        _record(2, 50, 50, [], []),  # no boxes: still an image
        _record(3, 60, 60, [[6, 12, 30, 60]], [2]),
    ])
    table = model_input_boxes(ds, min_size=50, max_size=80)
    assert table.image_sizes.tolist() == [[80, 40], [50, 50], [50, 50]]
    expected = [[4, 8, 24, 48], [0, 0, 40, 80], [5, 10, 25, 50]]
    assert torch.allclose(table.boxes, torch.tensor(expected, dtype=torch.float32))
    assert table.labels.tolist() == [1, 2, 2]
    assert table.image_index.tolist() == [0, 0, 2]
    assert table.box_image_sizes.tolist() == [[80, 40], [80, 40], [50, 50]]
    assert table.wh.tolist() == [[20, 40], [40, 80], [20, 40]]


def test_no_boxes_at_all():
    table = model_input_boxes(_dataset([_record(1, 30, 40, [], [])]), min_size=60, max_size=100)
    assert table.boxes.shape == (0, 4) and table.labels.shape == (0,)
    assert table.image_index.shape == (0,) and table.image_sizes.tolist() == [[60, 80]]
    empty = model_input_boxes(_dataset([]), min_size=60, max_size=100)
    assert empty.image_sizes.shape == (0, 2) and empty.boxes.shape == (0, 4)


@pytest.mark.parametrize("height,width", [(37, 91), (480, 640), (333, 500), (101, 99), (7, 300)])
def test_matches_the_transforms(height, width):
    """The sizes and boxes equal what the evaluation transforms produce from a real image."""
    rng = np.random.default_rng(height * 1000 + width)
    x1 = rng.uniform(0, width - 2, 5)
    y1 = rng.uniform(0, height - 2, 5)
    boxes = np.stack([x1, y1, rng.uniform(x1 + 1, width), rng.uniform(y1 + 1, height)], 1)
    boxes = boxes.astype(np.float32)
    labels = np.ones(5, np.int64)
    transforms = build_transforms(train=False, min_size=120, max_size=200)
    out = transforms(image=np.zeros((height, width, 3), np.uint8), boxes=boxes, labels=labels)
    table = model_input_boxes(_dataset([_record(1, height, width, boxes, labels)]),
                              min_size=120, max_size=200)
    assert table.image_sizes[0].tolist() == list(out["image"].shape[1:])
    assert torch.allclose(table.boxes, out["boxes"], atol=1e-3)


def test_model_input_sizes_rounds_like_the_resize():
    sizes = model_input_sizes(torch.tensor([[3, 1000], [1, 1]]), min_size=600, max_size=1000)
    assert sizes.tolist() == [[3, 1000], [600, 600]]
