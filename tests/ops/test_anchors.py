"""Anchor grid: hand values, layout, torchvision as the reference, caching, the IoU fast path."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detector.ops.anchors import AnchorGenerator
from detector.ops.boxes import batched_box_iou


def test_cell_anchors_hand_values():
    """Ratio r = h / w keeps the area size^2: w = size / sqrt(r), h = size * sqrt(r)."""
    cell = AnchorGenerator(sizes=(128,), ratios=(0.5, 1.0, 2.0)).cell_anchors()
    half_w = torch.tensor([128 / math.sqrt(0.5), 128.0, 128 / math.sqrt(2)]) / 2
    half_h = torch.tensor([128 * math.sqrt(0.5), 128.0, 128 * math.sqrt(2)]) / 2
    expected = torch.stack((-half_w, -half_h, half_w, half_h), dim=1)
    torch.testing.assert_close(cell, expected)
    assert torch.equal(cell[1], torch.tensor([-64.0, -64.0, 64.0, 64.0]))


def test_grid_layout_is_location_major():
    gen = AnchorGenerator(sizes=(32, 64), ratios=(0.5, 1.0, 2.0), stride=16)
    hf, wf, num = 3, 5, gen.num_anchors_per_location
    anchors = gen.grid_anchors((hf, wf))
    assert anchors.shape == (hf * wf * num, 4) and num == 6
    shifts = anchors.view(hf, wf, num, 4) - gen.cell_anchors()  # (y, x, a, 4): x, y, x, y shift
    ys = torch.arange(hf, dtype=torch.float32).view(hf, 1, 1) * 16
    xs = torch.arange(wf, dtype=torch.float32).view(1, wf, 1) * 16
    torch.testing.assert_close(shifts[..., 0], xs.expand(hf, wf, num), rtol=0, atol=1e-4)
    torch.testing.assert_close(shifts[..., 1], ys.expand(hf, wf, num), rtol=0, atol=1e-4)
    torch.testing.assert_close(shifts[..., 2:], shifts[..., :2], rtol=0, atol=1e-4)


def test_offset_moves_centres_to_cell_centres():
    gen = AnchorGenerator(sizes=(32,), ratios=(1.0,), stride=16, offset=0.5)
    anchors = gen.grid_anchors((1, 2))
    assert torch.equal(anchors, torch.tensor([[-8.0, -8.0, 24.0, 24.0], [8.0, -8.0, 40.0, 24.0]]))


@pytest.mark.parametrize("feature_size", [(50, 84), (7, 3), (1, 1)])
def test_matches_torchvision_anchor_generator(feature_size):
    """torchvision rounds its cell anchors to whole pixels, so agreement is within half a pixel."""
    hf, wf = feature_size
    ours = AnchorGenerator(sizes=(128, 256, 512), ratios=(0.5, 1.0, 2.0), stride=16)
    tv = TvAnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    images = ImageList(torch.zeros(1, 3, hf * 16, wf * 16), [(hf * 16, wf * 16)])
    expected = tv(images, [torch.zeros(1, 1, hf, wf)])[0]
    anchors = ours(torch.zeros(2, 512, hf, wf))
    assert anchors.shape == expected.shape
    torch.testing.assert_close(anchors, expected, rtol=0, atol=0.5)
    rounded_cell = ours.cell_anchors().round()
    torch.testing.assert_close(anchors.view(-1, 9, 4) - ours.cell_anchors() + rounded_cell,
                               expected.view(-1, 9, 4), rtol=0, atol=1e-3)


def test_cache_returns_the_same_grid_and_stays_bounded():
    gen = AnchorGenerator(cache_size=3)
    first = gen.grid_anchors((4, 5))
    assert gen.grid_anchors((4, 5)) is first
    assert gen.grid_anchors((4, 5), dtype=torch.float64).dtype == torch.float64
    for size in range(1, 20):
        gen.grid_anchors((size, size))
        gen.iou((size, size), torch.zeros(1, 1, 4))
        assert len(gen._cache) <= 3
    assert gen.grid_anchors((4, 5)) is not first  # evicted long ago, rebuilt equal
    assert torch.equal(gen.grid_anchors((4, 5)), first)


def test_iou_fast_path_equals_batched_iou_on_the_grid():
    gen = AnchorGenerator(sizes=(16, 40), ratios=(0.5, 1.0, 2.0), stride=8)
    torch_gen = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 6, 2, generator=torch_gen) * 60
    gt = torch.cat((xy, xy + 4 + torch.rand(3, 6, 2, generator=torch_gen) * 40), dim=-1)
    valid = torch.rand(3, 6, generator=torch_gen) < 0.7
    valid[2] = False
    anchors = gen.grid_anchors((9, 11))
    assert torch.equal(gen.iou((9, 11), gt, valid), batched_box_iou(anchors, gt, valid))


def test_rejects_bad_sizes_and_ratios():
    """The generator's own message, not ``min(())``'s "empty sequence" ValueError."""
    for sizes, ratios in (((), (1.0,)), ((32,), ()), ((32,), (0.0,)), ((-8, 32), (1.0,))):
        with pytest.raises(ValueError, match="anchor sizes and ratios must be positive"):
            AnchorGenerator(sizes=sizes, ratios=ratios)


@pytest.mark.gpu
def test_cuda_grid_matches_cpu(cuda_device):
    gen = AnchorGenerator()
    anchors = gen(torch.zeros(1, 1, 6, 7, device=cuda_device))
    assert anchors.device.type == "cuda"
    assert torch.equal(anchors.cpu(), gen.grid_anchors((6, 7)))
    gt = torch.tensor([[[10.0, 20.0, 200.0, 150.0]]])
    torch.testing.assert_close(gen.iou((6, 7), gt.to(cuda_device)).cpu(), gen.iou((6, 7), gt),
                               rtol=1e-6, atol=1e-7)
