"""Matcher against a brute-force reference (ties, empty and padded ground truth) and torchvision."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import Matcher as TvMatcher
from torchvision.ops import box_iou as tv_box_iou

from detector.ops.anchors import AnchorGenerator
from detector.ops.boxes import batched_box_iou
from detector.ops.matcher import Matcher, best_columns

SETTINGS = settings(max_examples=60, deadline=None)
CONFIGS = [  # (thresholds, labels): RPN, ROI with bg in [0.1, 0.5), ROI with bg in [0, 0.5)
    ((0.3, 0.7), (0, -1, 1)),
    ((0.1, 0.5), (-1, 0, 1)),
    ((0.5,), (0, 1)),
]


def brute_force_match(iou, valid, thresholds, labels, low_quality):
    """Plain loops: the matcher's contract written out one anchor and one ground truth at a time.

    iou (list[B][N][M]) and valid (list[B][M]) as nested lists. Thresholds are compared at float32
    precision, as torch (and torchvision) compare a float32 tensor with a Python float.
    """
    thresholds = torch.tensor(thresholds, dtype=torch.float32).tolist()
    out_idx, out_labels = [], []
    for image_iou, image_valid in zip(iou, valid, strict=True):
        gts = [m for m, ok in enumerate(image_valid) if ok]
        idx_row, label_row = [], []
        for row in image_iou:
            best, best_m = 0.0, 0
            for position, m in enumerate(gts):  # the first ground truth wins ties
                if position == 0 or row[m] > best:
                    best, best_m = row[m], m
            idx_row.append(best_m)
            label_row.append(labels[sum(best >= t for t in thresholds)])
        if low_quality:
            for m in gts:
                top = max(row[m] for row in image_iou)
                for n, row in enumerate(image_iou):
                    if top > 0 and row[m] == top:
                        label_row[n] = 1
        out_idx.append(idx_row)
        out_labels.append(label_row)
    return out_idx, out_labels


def quantised_iou(gen, batch, rows, cols, levels):
    """IoU values on a coarse grid, so that ties within rows and columns are common."""
    return torch.randint(0, levels + 1, (batch, rows, cols), generator=gen).float() / levels


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 3),
    rows=st.integers(1, 12),
    cols=st.integers(0, 5),
    levels=st.sampled_from([1, 3, 10]),
    config=st.sampled_from(CONFIGS),
    low_quality=st.booleans(),
)
def test_matches_brute_force_reference(seed, batch, rows, cols, levels, config, low_quality):
    gen = torch.Generator().manual_seed(seed)
    iou = quantised_iou(gen, batch, rows, cols, levels)
    valid = torch.rand(batch, cols, generator=gen) < 0.7
    iou = iou.masked_fill(~valid[:, None, :], -1.0)  # padding as batched_box_iou writes it
    thresholds, labels = config
    matcher = Matcher(thresholds=thresholds, labels=labels, allow_low_quality_matches=low_quality)
    matched_idx, got = matcher(iou)
    ref_idx, ref_labels = brute_force_match(iou.tolist(), valid.tolist(), thresholds, labels,
                                            low_quality)
    assert got.tolist() == ref_labels
    assert matched_idx.tolist() == ref_idx
    assert torch.equal(matcher.labels_only(iou), got)
    rows = torch.randint(0, rows, (batch, 3), generator=gen)
    assert torch.equal(best_columns(iou, rows), matched_idx.gather(1, rows))
    assert matched_idx.dtype == torch.long and got.dtype == torch.long


def test_hand_case_with_ties_and_low_quality():
    """Rows are anchors, columns ground truth; RPN thresholds (0.3, 0.7).

    gt0's best IoU is 0.4, held by anchors 0 and 2 (a tie): both become foreground although 0.4 is
    only "ignore" by threshold. gt1's best is 0.8 (anchor 1). Anchor 3 is background (0.1), anchor 4
    is ignored (0.5 < 0.7 and not anybody's best).
    """
    iou = torch.tensor([[[0.4, 0.0], [0.2, 0.8], [0.4, 0.1], [0.1, 0.0], [0.0, 0.5]]])
    rpn = dict(thresholds=(0.3, 0.7), labels=(0, -1, 1))
    idx, labels = Matcher(**rpn, allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [[1, 1, 1, 0, -1]]
    assert idx.tolist() == [[0, 1, 0, 0, 1]]
    _, labels = Matcher(**rpn, allow_low_quality_matches=False)(iou)
    assert labels.tolist() == [[-1, 1, -1, 0, -1]]


def test_empty_ground_truth_gives_background_everywhere():
    iou = torch.zeros(2, 7, 0)
    idx, labels = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)(
        iou
    )
    assert labels.shape == (2, 7) and (labels == 0).all() and (idx == 0).all()
    _, labels = Matcher(thresholds=(0.1, 0.5), labels=(-1, 0, 1))(iou)
    assert (labels == -1).all()  # IoU 0 is below the ROI head's lowest threshold


def test_all_padding_and_zero_overlap_images_are_background():
    iou = torch.zeros(2, 5, 3)
    iou[0] = -1.0  # only padding
    idx, labels = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)(
        iou
    )
    assert (labels == 0).all()  # a best IoU of 0 never makes a low-quality match
    # every row still points at a real column (the first of the tied zeros), safe to gather with
    assert idx.shape == (2, 5) and idx.dtype == torch.long and (idx == 0).all()


def test_padded_batch_equals_per_image_calls():
    gen = torch.Generator().manual_seed(0)
    anchors = AnchorGenerator(sizes=(32, 64), stride=16).grid_anchors((6, 6))
    counts = [3, 0, 1]
    gt = torch.zeros(3, 3, 4)
    for b, count in enumerate(counts):
        xy = torch.rand(count, 2, generator=gen) * 60
        gt[b, :count] = torch.cat((xy, xy + 10 + torch.rand(count, 2, generator=gen) * 50), dim=-1)
    valid = torch.arange(3)[None, :] < torch.tensor(counts)[:, None]
    matcher = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)
    idx, labels = matcher(batched_box_iou(anchors, gt, valid))
    for b, count in enumerate(counts):
        own_idx, own_labels = matcher(batched_box_iou(anchors, gt[b: b + 1, :count]))
        assert torch.equal(labels[b], own_labels[0])
        fg = own_labels[0] == 1
        assert torch.equal(idx[b][fg], own_idx[0][fg])
        assert (idx[b] < max(count, 1)).all()  # never a padded column


@pytest.mark.parametrize("low_quality", [False, True])
def test_matches_torchvision(low_quality):
    """torchvision codes: -1 below the low threshold -> our 0, -2 between -> our -1, >= 0 -> 1.

    One known difference: torchvision's low-quality pass also fires for a ground truth whose best
    IoU is 0 (making every anchor that misses it "its best"); ours requires IoU > 0. The boxes here
    all overlap some anchor, where the two agree.
    """
    anchors = AnchorGenerator(stride=16).grid_anchors((20, 30))
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(2, 8, 2, generator=gen) * 300
    gt = torch.cat((xy, xy + 8 + torch.rand(2, 8, 2, generator=gen) * 200), dim=-1)
    matcher = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1),
                      allow_low_quality_matches=low_quality)
    idx, labels = matcher(batched_box_iou(anchors, gt))
    tv = TvMatcher(0.7, 0.3, allow_low_quality_matches=low_quality)
    for b in range(2):
        tv_match = tv(tv_box_iou(gt[b], anchors))
        tv_labels = torch.where(tv_match >= 0, 1, torch.where(tv_match == -1, 0, -1))
        assert torch.equal(labels[b], tv_labels)
        fg = tv_match >= 0
        assert torch.equal(idx[b][fg], tv_match[fg])
        assert torch.equal(idx[b], tv_box_iou(gt[b], anchors).max(dim=0).indices)


def test_layout_does_not_change_the_result():
    gen = torch.Generator().manual_seed(2)
    iou_mn = quantised_iou(gen, 2, 6, 40, 5)  # (B, M, N) contiguous
    matcher = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)
    transposed = matcher(iou_mn.transpose(1, 2))
    contiguous = matcher(iou_mn.transpose(1, 2).contiguous())
    assert all(torch.equal(a, b) for a, b in zip(transposed, contiguous, strict=True))


def test_many_ground_truth_columns():
    """More than 255 ground truth boxes takes the wide-index path of the first-maximum search."""
    gen = torch.Generator().manual_seed(3)
    iou = quantised_iou(gen, 1, 50, 300, 20)
    idx, _ = Matcher(thresholds=(0.5,), labels=(0, 1))(iou)
    assert torch.equal(idx, iou.max(dim=2).indices)


def test_rejects_bad_configuration():
    with pytest.raises(ValueError):
        Matcher(thresholds=(0.3, 0.7), labels=(0, 1))
    with pytest.raises(ValueError):
        Matcher(thresholds=(0.7, 0.3), labels=(0, -1, 1))
    with pytest.raises(ValueError):
        Matcher(thresholds=(0.5,), labels=(0, 2))


@pytest.mark.gpu
def test_cuda_matches_cpu(cuda_device):
    gen = torch.Generator().manual_seed(4)
    iou = quantised_iou(gen, 3, 200, 7, 10)
    matcher = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)
    cpu = matcher(iou)
    cuda = matcher(iou.to(cuda_device))
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, cuda, strict=True))
