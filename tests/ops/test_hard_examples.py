"""Online hard example mining's choice (detector.ops.hard_examples): the top-N losses per image
after an NMS on them, hand-checked on two images of four RoIs."""

from __future__ import annotations

import torch

from detector.ops.hard_examples import hard_example_mask

# image 0: A and B overlap (IoU 90 / 110 = 0.82 > 0.7), C and D apart from everything
# image 1: E has A's coordinates (other image: no suppression), F is E's twin but invalid,
#          G and H apart from everything
BOXES = torch.tensor([
    [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
    [[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]],
], dtype=torch.float32)
LOSSES = torch.tensor([[5.0, 4.0, 3.0, 1.0],
                       [2.0, 100.0, 0.5, 0.1]])
VALID = torch.tensor([[True, True, True, True],
                      [True, False, True, True]])


def _mask(**kwargs) -> list[list[bool]]:
    return hard_example_mask(BOXES, LOSSES, VALID, **kwargs).tolist()


def test_top_two_per_image_after_the_nms():
    # image 0: A (5), B suppressed by A, C (3); image 1: E (2; A in the other image and the
    # invalid F do not suppress it), G (0.5)
    assert _mask(num=2) == [[True, False, True, False], [True, False, True, False]]


def test_fewer_survivors_than_num_keeps_every_survivor():
    assert _mask(num=4) == [[True, False, True, True], [True, False, True, True]]
    assert _mask(num=10) == _mask(num=4)


def test_without_the_overlap_rule_both_near_duplicates_are_kept():
    assert _mask(num=2, iou_threshold=0.9) == [[True, True, False, False],
                                               [True, False, True, False]]


def test_the_hardest_of_the_pair_wins_whatever_its_position():
    swapped = LOSSES.clone()
    swapped[0, :2] = torch.tensor([4.0, 5.0])  # B harder than A now: A is suppressed
    mask = hard_example_mask(BOXES, swapped, VALID, num=2)
    assert mask[0].tolist() == [False, True, True, False]


def test_one_per_image():
    assert _mask(num=1) == [[True, False, False, False], [True, False, False, False]]


def test_nothing_valid_keeps_nothing():
    mask = hard_example_mask(BOXES, LOSSES, torch.zeros_like(VALID), num=2)
    assert not mask.any() and mask.shape == VALID.shape


def test_no_rois_at_all():
    mask = hard_example_mask(torch.zeros(2, 0, 4), torch.zeros(2, 0),
                             torch.zeros(2, 0, dtype=torch.bool), num=3)
    assert mask.shape == (2, 0)


def test_random_property_at_most_num_and_no_kept_pair_overlaps():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 50, 2, generator=generator) * 100
    boxes = torch.cat((xy, xy + 5 + torch.rand(3, 50, 2, generator=generator) * 30), dim=2)
    losses = torch.rand(3, 50, generator=generator)
    valid = torch.rand(3, 50, generator=generator) > 0.2
    mask = hard_example_mask(boxes, losses, valid, num=8, iou_threshold=0.5)
    assert (mask.sum(dim=1) <= 8).all() and not (mask & ~valid).any()
    from torchvision.ops import box_iou
    for image in range(3):  # a check, not the code under test: a loop is fine here
        kept = boxes[image][mask[image]]
        iou = box_iou(kept, kept).fill_diagonal_(0)
        assert (iou <= 0.5).all()
        # every valid RoI harder than the easiest kept one is kept or overlaps a kept one
        easiest = losses[image][mask[image]].min()
        harder = valid[image] & ~mask[image] & (losses[image] > easiest)
        if harder.any():
            assert (box_iou(boxes[image][harder], kept).amax(dim=1) > 0.5).all()
