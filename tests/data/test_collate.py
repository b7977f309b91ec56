"""collate_batch produces the Batch of docs/design.md exactly."""

import pytest
import torch

from detector.data.collate import collate_batch, padded_size


def _item(h, w, boxes, labels, image_id, orig=(10, 10), scale=(1.0, 1.0), fill=1.0):
    return {"image": torch.full((3, h, w), fill), "boxes": torch.tensor(boxes).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long), "image_id": image_id,
            "orig_size": orig, "scale": scale}


def test_hand_computed_batch():
    items = [_item(40, 50, [[1.0, 2, 3, 4], [5, 6, 7, 8]], [2, 1], 11, (20, 25), (2.0, 2.0), 1.0),
             _item(70, 20, [], [], 12, (140, 40), (0.5, 0.5), 2.0)]
    batch = collate_batch(items)
    assert set(batch) == {"images", "image_sizes", "boxes", "labels", "box_valid", "image_ids",
                          "orig_sizes", "scales"}
    assert batch["images"].shape == (2, 3, 96, 64) and batch["images"].dtype == torch.float32
    assert batch["images"][0, :, :40, :50].eq(1).all() and batch["images"][0, :, 40:].eq(0).all()
    assert batch["images"][0, :, :, 50:].eq(0).all()
    assert batch["images"][1, :, :70, :20].eq(2).all() and batch["images"][1, :, :, 20:].eq(0).all()
    assert batch["image_sizes"].tolist() == [[40, 50], [70, 20]]
    assert batch["image_sizes"].dtype == torch.long
    assert batch["boxes"].tolist() == [[[1, 2, 3, 4], [5, 6, 7, 8]], [[0, 0, 0, 0], [0, 0, 0, 0]]]
    assert batch["labels"].tolist() == [[2, 1], [0, 0]] and batch["labels"].dtype == torch.long
    assert batch["box_valid"].tolist() == [[True, True], [False, False]]
    assert batch["image_ids"].tolist() == [11, 12] and batch["image_ids"].dtype == torch.long
    assert batch["orig_sizes"].tolist() == [[20, 25], [140, 40]]
    assert batch["scales"].tolist() == [[2.0, 2.0], [0.5, 0.5]]
    assert batch["scales"].dtype == torch.float32


def test_all_images_without_boxes_gives_zero_width_box_tensors():
    batch = collate_batch([_item(32, 32, [], [], 1), _item(31, 33, [], [], 2)])
    assert batch["images"].shape == (2, 3, 32, 64)
    assert batch["boxes"].shape == (2, 0, 4) and batch["labels"].shape == (2, 0)
    assert batch["box_valid"].shape == (2, 0) and batch["box_valid"].dtype == torch.bool


@pytest.mark.parametrize("divisor", [1, 16, 32])
def test_padded_size_is_smallest_multiple(divisor):
    sizes = torch.tensor([[33, 64], [17, 65]])
    h, w = padded_size(sizes, divisor)
    assert h % divisor == 0 and w % divisor == 0
    assert 33 <= h < 33 + divisor and 65 <= w < 65 + divisor


def test_empty_list_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        collate_batch([])
