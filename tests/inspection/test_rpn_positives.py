"""Positive RPN anchors per image (detector/inspection/rpn_positives.py): hand cases on a 2 x 2
grid, and the training criterion's own target assignment as the reference on random batches."""

from __future__ import annotations

import math

import pytest
import torch

from detector.data.box_stats import BoxTable
from detector.inspection.data_report import rpn_line
from detector.inspection.rpn_positives import rpn_positives
from detector.modeling import build_criterion
from detector.modeling.rpn import anchors_inside
from detector.ops.anchors import AnchorGenerator
from detector.ops.losses import BinaryCrossEntropy, CrossEntropy
from detector.ops.targets import assign_targets

GRID = {"sizes": [16.0], "ratios": [1.0], "stride": 16, "offset": 0.5}  # 4 anchors on 32 x 32


def _table(boxes_per_image, sizes):
    boxes = [b for image in boxes_per_image for b in image]
    index = [i for i, image in enumerate(boxes_per_image) for _ in image]
    return BoxTable(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    labels=torch.ones(len(boxes), dtype=torch.long),
                    image_index=torch.tensor(index, dtype=torch.long),
                    image_sizes=torch.tensor(sizes, dtype=torch.long))


def test_one_exact_box_is_one_positive_and_an_empty_image_none():
    """Anchors (0,0,16,16), (16,0,32,16), (0,16,16,32), (16,16,32,32): the box equal to the first
    is its one positive, the other three are background (IoU 0); the empty image has 4 background."""
    result = rpn_positives(_table([[[0, 0, 16, 16]], []], [[32, 32], [32, 32]]), **GRID)
    assert result.images == 2
    assert result.positives == pytest.approx(0.5) and result.used == pytest.approx(4.0)


def test_a_box_too_small_for_any_anchor_keeps_its_best_one():
    """A 4 x 4 box: IoU 16 / 256 with the anchor around it, under the background threshold, so
    only the low-quality rule makes that anchor positive."""
    result = rpn_positives(_table([[[2, 2, 6, 6]]], [[32, 32]]), **GRID)
    assert result.positives == 1.0 and result.used == 4.0


def test_the_ignore_band_and_the_foreground_threshold():
    """Box (0,0,16,20): IoU 256 / 320 = 0.8 with the first anchor (positive), 64 / 448 = 0.14 with
    the one below, 64 / 512 = 0.125 (background); box (16,0,32,10) in another image: IoU 160 / 256 = 0.625 with the
    second anchor, under 0.7 but its best (positive). With fg 0.85 the first box's anchor is
    still its best: positive either way; with bg 0.1 the anchor at 0.125 is ignored, not used."""
    table = _table([[[0, 0, 16, 20]], [[16, 0, 32, 10]]], [[32, 32], [32, 32]])
    assert rpn_positives(table, **GRID).positives == 1.0
    ignored = rpn_positives(table, **GRID, fg_iou=0.85, bg_iou=0.1)
    assert ignored.positives == 1.0 and ignored.used == pytest.approx((3 + 4) / 2)


def test_anchors_centred_outside_a_smaller_image_are_not_counted():
    """Images 32 x 32 and 16 x 32 (h x w) on one 2 x 2 grid: the second has only the top row."""
    result = rpn_positives(_table([[], []], [[32, 32], [16, 32]]), **GRID)
    assert result.used == pytest.approx((4 + 2) / 2) and result.positives == 0.0


def test_no_images_gives_none():
    assert rpn_positives(_table([], []), **GRID) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_training_criterions_assignment(seed):
    """The RPN criterion's matcher and inside rule (build_criterion's defaults), run through
    assign_targets sampling-free on the padded batch, count the same anchors."""
    g = torch.Generator().manual_seed(seed)
    sizes = [[96, 128], [128, 80], [64, 64], [128, 128]]
    grid = {"sizes": [16.0, 32.0, 64.0], "ratios": [0.5, 1.0, 2.0], "stride": 16, "offset": 0.5}
    boxes_per_image = []
    for h, w in sizes:
        n = int(torch.randint(0, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 8.0, h - 8.0])
        wh = 4 + torch.rand(n, 2, generator=g) * 60
        far = torch.minimum(xy + wh, torch.tensor([float(w), float(h)]))
        boxes_per_image.append(torch.cat([xy, far], dim=1).tolist())
    table = _table(boxes_per_image, sizes)
    result = rpn_positives(table, **grid)

    criterion = build_criterion(rpn_cls_loss=BinaryCrossEntropy(), roi_cls_loss=CrossEntropy())
    generator = AnchorGenerator(**grid)
    anchors = generator.grid_anchors((math.ceil(128 / 16), math.ceil(128 / 16)))
    most = max(max(len(b) for b in boxes_per_image), 1)
    gt = torch.zeros(len(sizes), most, 4)
    valid = torch.zeros(len(sizes), most, dtype=torch.bool)
    for i, image in enumerate(boxes_per_image):  # the reference may loop
        if image:
            gt[i, :len(image)] = torch.tensor(image)
            valid[i, :len(image)] = True
    inside = anchors_inside(anchors, table.image_sizes, criterion.rpn.anchor_border)
    labels = assign_targets(anchors, gt, valid, matcher=criterion.rpn.matcher,
                            box_coder=criterion.rpn.box_coder, reference_valid=inside,
                            num_samples=None).labels
    assert result.positives == pytest.approx((labels > 0).sum(1).double().mean().item())
    assert result.used == pytest.approx((labels >= 0).sum(1).double().mean().item())
    assert result.median == (labels > 0).sum(1).double().median().item()


def test_the_printed_line_names_both_normalisers():
    result = rpn_positives(_table([[[0, 0, 16, 16]], []], [[32, 32], [32, 32]]), **GRID)
    line = rpn_line(result)
    assert line.startswith("RPN positive anchors per image: 0.5 (median 0) among 4 in ")
    assert "loss=focal_sampling_free" in line and "256" in line


def test_chunking_the_images_changes_nothing(monkeypatch):
    """One image per chunk (a tiny IoU budget) against all at once."""
    import detector.inspection.rpn_positives as module

    table = _table([[[0, 0, 16, 20]], [], [[16, 0, 32, 10], [2, 2, 6, 6]]],
                   [[32, 32], [16, 32], [32, 32]])
    whole = rpn_positives(table, **GRID)
    monkeypatch.setattr(module, "IOU_ELEMENTS", 1)
    assert rpn_positives(table, **GRID) == whole


def test_a_large_split_is_measured_on_a_seeded_sample():
    """Three images, each with one exact box (one positive) but the middle one empty: a sample of
    two says how many it measured, and the same seed picks the same images."""
    table = _table([[[0, 0, 16, 16]], [], [[16, 16, 32, 32]]], [[32, 32]] * 3)
    sample = rpn_positives(table, **GRID, max_images=2, seed=3)
    assert (sample.images, sample.total_images) == (2, 3)
    assert sample.positives in (0.5, 1.0) and sample.used == 4.0
    assert rpn_positives(table, **GRID, max_images=2, seed=3) == sample
    assert rpn_line(sample).endswith("; 2 of 3 images measured")
    assert "measured" not in rpn_line(rpn_positives(table, **GRID))
