"""Box math: hand-computed cases, properties over random boxes, torchvision as the reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder
from torchvision.ops import box_iou as tv_box_iou

from detector.ops.boxes import (
    DEFAULT_SCALE_CLAMP,
    BoxCoder,
    batched_box_iou,
    box_area,
    box_iou,
    clip_boxes,
    grid_box_iou,
    remove_small_boxes_mask,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

SETTINGS = settings(max_examples=50, deadline=None)


def random_boxes(gen: torch.Generator, shape: tuple[int, ...], *, min_size=1.0, max_size=200.0,
                 extent=500.0) -> torch.Tensor:
    """Tensor[*shape, 4]: xyxy boxes with sides log-uniform in [min_size, max_size]."""
    log_lo, log_hi = math.log(min_size), math.log(max_size)
    wh = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(*shape, 2, generator=gen))
    xy = (torch.rand(*shape, 2, generator=gen) - 0.5) * 2 * extent
    return torch.cat((xy, xy + wh), dim=-1)


# ----------------------------------------------------------------------------- conversions


def test_conversions_hand_values():
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    assert torch.equal(xyxy_to_xywh(xyxy), torch.tensor([[1.0, 2.0, 4.0, 8.0]]))
    assert xyxy_to_xywh(torch.zeros(2, 0, 4)).shape == (2, 0, 4)


def test_xywh_to_xyxy_hand_values():
    """A COCO box at (1.5, 2) of 4 x 8.25 ends at (5.5, 10.25); a zero-size box is its corner;
    leading dimensions, dtype and the empty case are kept."""
    xywh = torch.tensor([[[1.5, 2.0, 4.0, 8.25], [3.0, 7.0, 0.0, 0.0]]], dtype=torch.float64)
    xyxy = xywh_to_xyxy(xywh)
    assert xyxy.dtype == torch.float64 and xyxy.shape == (1, 2, 4)
    assert xyxy.tolist() == [[[1.5, 2.0, 5.5, 10.25], [3.0, 7.0, 3.0, 7.0]]]
    assert torch.equal(xyxy_to_xywh(xyxy), xywh)  # the way back
    assert xywh_to_xyxy(torch.zeros(0, 4)).shape == (0, 4)


# ----------------------------------------------------------------------------- geometry


def test_box_area_hand_values_and_degenerate_boxes():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [4.0, 4.0, 2.0, 6.0]])
    assert torch.equal(box_area(boxes), torch.tensor([6.0, 0.0, 0.0]))


def test_clip_boxes_uses_each_images_own_size():
    boxes = torch.tensor([[[-5.0, -5.0, 50.0, 50.0]], [[-5.0, -5.0, 50.0, 50.0]]])
    sizes = torch.tensor([[20, 30], [40, 10]])  # (h, w)
    expected = torch.tensor([[[0.0, 0.0, 30.0, 20.0]], [[0.0, 0.0, 10.0, 40.0]]])
    assert torch.equal(clip_boxes(boxes, sizes), expected)


def test_clip_boxes_keeps_inside_boxes():
    boxes = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 10.0, 20.0]]])
    assert torch.equal(clip_boxes(boxes, torch.tensor([[20, 10]])), boxes)


def test_remove_small_boxes_mask():
    boxes = torch.tensor(
        [[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 3.9, 10.0], [0.0, 0.0, 10.0, 3.9], [2.0, 2.0, 6.0, 6.0]]
    )
    assert remove_small_boxes_mask(boxes, 4.0).tolist() == [True, False, False, True]


# ----------------------------------------------------------------------------- overlap


def test_box_iou_hand_computed_3x4():
    """All boxes but S have area 4, so IoU = inter / (8 - inter):

    A=(0,0,2,2) B=(1,1,3,3) C=(0,0,4,1)  vs  P=(0,0,2,2) Q=(2,0,4,2) R=(1,0,2,4) S=(10,10,11,11)
    A: P identical -> 1; Q touches along x=2 -> 0; R overlaps 1x2 -> 2/6; S far -> 0
    B: P 1x1 -> 1/7; Q 1x1 -> 1/7; R 1x2 -> 2/6; S -> 0
    C: P 2x1 -> 2/6; Q 2x1 -> 2/6; R 1x1 -> 1/7; S -> 0
    """
    boxes1 = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 4.0, 1.0]])
    boxes2 = torch.tensor(
        [[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 4.0, 2.0], [1.0, 0.0, 2.0, 4.0], [10.0, 10.0, 11.0, 11.0]]
    )
    expected = torch.tensor(
        [[1, 0, 1 / 3, 0], [1 / 7, 1 / 7, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 7, 0]], dtype=torch.float32
    )
    iou = box_iou(boxes1, boxes2)
    assert iou.shape == (3, 4) and iou.dtype == torch.float32
    torch.testing.assert_close(iou, expected)


def test_iou_of_degenerate_boxes_is_zero_not_nan():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    line = torch.tensor([[0.0, 1.0, 2.0, 1.0]])
    assert box_iou(point, point).item() == 0.0
    assert box_iou(point, line).item() == 0.0


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 40), m=st.integers(0, 12))
def test_box_iou_matches_torchvision(seed, n, m):
    gen = torch.Generator().manual_seed(seed)
    boxes1, boxes2 = random_boxes(gen, (n,)), random_boxes(gen, (m,), extent=100.0)
    torch.testing.assert_close(box_iou(boxes1, boxes2), tv_box_iou(boxes1, boxes2), rtol=1e-5,
                               atol=1e-6)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3), shared=st.booleans())
def test_batched_iou_equals_per_image_iou_and_padding_never_matches(seed, batch, shared):
    gen = torch.Generator().manual_seed(seed)
    boxes1 = random_boxes(gen, (30,) if shared else (batch, 30), extent=100.0)
    boxes2 = random_boxes(gen, (batch, 5), extent=100.0)
    valid2 = torch.rand(batch, 5, generator=gen) < 0.6
    iou = batched_box_iou(boxes1, boxes2, valid2)
    assert iou.shape == (batch, 30, 5)
    for b in range(batch):
        own = box_iou(boxes1 if shared else boxes1[b], boxes2[b])
        torch.testing.assert_close(iou[b][:, valid2[b]], own[:, valid2[b]], rtol=0, atol=0)
        assert (iou[b][:, ~valid2[b]] == -1).all()
    assert torch.equal(batched_box_iou(boxes1, boxes2), batched_box_iou(boxes1, boxes2, None))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), hg=st.integers(1, 5), wg=st.integers(1, 6),
       shapes=st.integers(1, 3))
def test_grid_box_iou_is_bit_identical_to_batched_iou(seed, hg, wg, shapes):
    gen = torch.Generator().manual_seed(seed)
    x_intervals = random_boxes(gen, (wg, shapes), extent=60.0)[..., 0::2]  # (Wg, A, 2)
    y_intervals = random_boxes(gen, (hg, shapes), extent=60.0)[..., 0::2]  # (Hg, A, 2)
    xs = x_intervals.unsqueeze(0).expand(hg, -1, -1, -1)
    ys = y_intervals.unsqueeze(1).expand(-1, wg, -1, -1)
    grid = torch.stack((xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]), dim=-1).reshape(-1, 4)
    gt = random_boxes(gen, (2, 4), extent=60.0)
    valid = torch.tensor([[True, True, False, True], [False, False, False, False]])
    expected = batched_box_iou(grid, gt, valid)
    assert torch.equal(grid_box_iou(x_intervals, y_intervals, gt, valid), expected)
    assert torch.equal(grid_box_iou(x_intervals, y_intervals, gt), batched_box_iou(grid, gt))


def test_iou_is_float32_for_half_inputs_and_under_autocast():
    gen = torch.Generator().manual_seed(0)
    boxes1, boxes2 = random_boxes(gen, (6,), extent=50.0), random_boxes(gen, (2, 3), extent=50.0)
    half1, half2 = boxes1.half(), boxes2.half()
    reference = batched_box_iou(half1.float(), half2.float())
    assert torch.equal(batched_box_iou(half1, half2), reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        iou = batched_box_iou(boxes1, boxes2)
        deltas = BoxCoder().encode(boxes1, boxes2[0, :1])
    assert iou.dtype == torch.float32 and deltas.dtype == torch.float32
    assert torch.equal(iou, batched_box_iou(boxes1, boxes2))


# ----------------------------------------------------------------------------- box coding


def test_encode_decode_hand_computed():
    """reference (0,0,10,20): centre (5,10), size 10x20; target (2,4,22,24): centre (12,14), 20x20.

    dx = (12 - 5) / 10 = 0.7, dy = (14 - 10) / 20 = 0.2, dw = log(20 / 10) = log 2,
    dh = log(20 / 20) = 0. The ROI weights (10, 10, 5, 5) scale these to (7, 2, 5 log 2, 0).
    """
    reference = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    target = torch.tensor([[2.0, 4.0, 22.0, 24.0]])
    rpn, roi = BoxCoder(weights=(1, 1, 1, 1)), BoxCoder(weights=(10, 10, 5, 5))
    torch.testing.assert_close(rpn.encode(reference, target),
                               torch.tensor([[0.7, 0.2, math.log(2), 0.0]]))
    torch.testing.assert_close(roi.encode(reference, target),
                               torch.tensor([[7.0, 2.0, 5 * math.log(2), 0.0]]))
    rpn_deltas = torch.tensor([[0.7, 0.2, math.log(2), 0.0]])
    roi_deltas = torch.tensor([[7.0, 2.0, 5 * math.log(2), 0.0]])
    torch.testing.assert_close(rpn.decode(reference, rpn_deltas), target)
    torch.testing.assert_close(roi.decode(reference, roi_deltas), target)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    log_size=st.floats(math.log(1e-2), math.log(1e4)),
    weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 4.0, 0.5)]),
)
def test_encode_decode_round_trip(seed, log_size, weights):
    """Tiny to huge boxes, each target at most e^3.5 (< 1000/16) times its reference's size."""
    gen = torch.Generator().manual_seed(seed)
    size = math.exp(log_size)
    reference = random_boxes(gen, (64,), min_size=size, max_size=size * 2, extent=10 * size)
    ratio = torch.exp((torch.rand(64, 2, generator=gen) - 0.5) * 7)
    jitter = (torch.rand(64, 2, generator=gen) - 0.5) * size
    centre = (reference[:, :2] + reference[:, 2:]) / 2 + jitter
    wh = (reference[:, 2:] - reference[:, :2]) * ratio
    target = torch.cat((centre - wh / 2, centre + wh / 2), dim=-1)
    coder = BoxCoder(weights=weights)
    decoded = coder.decode(reference, coder.encode(reference, target))
    scale = target.abs().amax(dim=1, keepdim=True)  # float32 resolution of these coordinates
    assert ((decoded - target).abs() <= 1e-5 * scale).all()


def test_weights_scale_the_deltas():
    gen = torch.Generator().manual_seed(2)
    reference, target = random_boxes(gen, (10,)), random_boxes(gen, (10,))
    weights = (10.0, 10.0, 5.0, 5.0)
    plain = BoxCoder(weights=(1, 1, 1, 1)).encode(reference, target)
    torch.testing.assert_close(BoxCoder(weights=weights).encode(reference, target),
                               plain * torch.tensor(weights))


def test_decode_clamps_dw_dh_at_log_1000_over_16():
    reference = torch.tensor([[0.0, 0.0, 16.0, 8.0]])
    deltas = torch.tensor([[0.0, 0.0, 100.0, 50.0]])
    boxes = BoxCoder(weights=(1, 1, 1, 1)).decode(reference, deltas)
    width, height = boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]
    # exactly 1000 / 16 times the reference size, up to float32 rounding of exp(log(62.5))
    torch.testing.assert_close(width, torch.tensor(16.0 * 1000 / 16), rtol=1e-6, atol=0)
    torch.testing.assert_close(height, torch.tensor(8.0 * 1000 / 16), rtol=1e-6, atol=0)
    assert DEFAULT_SCALE_CLAMP == pytest.approx(math.log(1000 / 16))
    # the clamp applies after the weights: dw = 5 * 100 with weight 5 is the same clamped box
    roi = BoxCoder(weights=(10, 10, 5, 5)).decode(reference, deltas * torch.tensor([10, 10, 5, 5]))
    torch.testing.assert_close(roi, boxes)


def test_class_specific_deltas_layout():
    gen = torch.Generator().manual_seed(3)
    reference, num_classes = random_boxes(gen, (7,)), 3
    deltas = torch.randn(7, num_classes * 4, generator=gen)
    coder = BoxCoder(weights=(10, 10, 5, 5))
    boxes = coder.decode(reference, deltas)
    assert boxes.shape == (7, num_classes * 4)
    for k in range(num_classes):
        torch.testing.assert_close(boxes[:, 4 * k: 4 * k + 4],
                                   coder.decode(reference, deltas[:, 4 * k: 4 * k + 4]))
    tv = TvBoxCoder(weights=(10, 10, 5, 5), bbox_xform_clip=DEFAULT_SCALE_CLAMP)
    torch.testing.assert_close(boxes, tv.decode_single(deltas, reference), rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError):
        coder.decode(reference, deltas[:, :6])


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1),
       weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]))
def test_box_coder_matches_torchvision(seed, weights):
    gen = torch.Generator().manual_seed(seed)
    reference, target = random_boxes(gen, (50,)), random_boxes(gen, (50,))
    ours = BoxCoder(weights=weights)
    tv = TvBoxCoder(weights=weights, bbox_xform_clip=DEFAULT_SCALE_CLAMP)
    deltas = ours.encode(reference, target)
    torch.testing.assert_close(deltas, tv.encode_single(target, reference), rtol=1e-4, atol=1e-4)
    big = torch.randn(50, 4, generator=gen) * 3  # some beyond the clamp
    torch.testing.assert_close(ours.decode(reference, big), tv.decode_single(big, reference),
                               rtol=1e-5, atol=1e-3)


@pytest.mark.gpu
def test_cuda_matches_cpu(cuda_device):
    gen = torch.Generator().manual_seed(4)
    boxes1 = random_boxes(gen, (300,), extent=100.0)
    boxes2 = random_boxes(gen, (2, 9), extent=100.0)
    valid2 = torch.rand(2, 9, generator=gen) < 0.7
    iou = batched_box_iou(boxes1.to(cuda_device), boxes2.to(cuda_device), valid2.to(cuda_device))
    torch.testing.assert_close(iou.cpu(), batched_box_iou(boxes1, boxes2, valid2), rtol=1e-6,
                               atol=1e-7)
    xs, ys = boxes1[:10, 0::2].view(5, 2, 2), boxes1[10:16, 1::2].view(3, 2, 2)
    grid = grid_box_iou(xs.to(cuda_device), ys.to(cuda_device), boxes2.to(cuda_device))
    torch.testing.assert_close(grid.cpu(), grid_box_iou(xs, ys, boxes2), rtol=1e-6, atol=1e-7)
    coder = BoxCoder(weights=(10, 10, 5, 5))
    target = random_boxes(gen, (300,), extent=100.0)
    deltas = coder.encode(boxes1.to(cuda_device), target.to(cuda_device))
    torch.testing.assert_close(deltas.cpu(), coder.encode(boxes1, target), rtol=1e-5, atol=1e-5)
    decoded = coder.decode(boxes1.to(cuda_device), deltas)
    torch.testing.assert_close(decoded.cpu(), coder.decode(boxes1, deltas.cpu()), rtol=1e-5,
                               atol=1e-4)
