"""anchor_fit: shape IoU, best-anchor IoU on the real grid (vs brute force), coverage, k-means fit."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from detector.ops.anchor_fit import (
    anchor_coverage,
    anchor_shapes,
    best_anchor_iou,
    fit_anchors,
    grid_score,
    grid_shape_iou,
    shape_iou,
)
from detector.ops.anchors import AnchorGenerator

GRID = dict(sizes=(16, 32), ratios=(0.5, 1.0, 2.0), stride=16, offset=0.5)


def test_anchor_shapes_are_the_generators_cell_anchors():
    gen = AnchorGenerator(sizes=(16, 32, 64), ratios=(0.5, 1.0, 2.0))
    cell = gen.cell_anchors(dtype=torch.float64)
    assert torch.allclose(anchor_shapes(gen.sizes, gen.ratios), cell[:, 2:] - cell[:, :2])


def test_shape_iou_by_hand():
    a = torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 4.0], [2.0, 2.0]])
    # (2x2, 1x4): inter 1*2 = 2, union 4 + 4 - 2 = 6; (1x1, 2x2): 1 / 4
    expected = torch.tensor([[1 / 3, 1.0], [1 / 4, 1 / 4]])
    assert torch.allclose(shape_iou(a, b), expected)
    assert shape_iou(a, b).shape == (2, 2) and shape_iou(a[:0], b).shape == (0, 2)


def _best(boxes, hw, **grid):
    n = len(boxes)
    return best_anchor_iou(torch.tensor(boxes, dtype=torch.float32),
                           torch.tensor([hw] * n), **{**GRID, **grid})


def test_box_equal_to_an_anchor():
    # size 32, ratio 2: w = 32 / sqrt(2), h = 32 sqrt(2), centred on the grid point (24, 40)
    w, h = 32 / math.sqrt(2), 32 * math.sqrt(2)
    iou, index = _best([[24 - w / 2, 40 - h / 2, 24 + w / 2, 40 + h / 2]], (128, 128))
    assert iou.item() == pytest.approx(1.0, abs=1e-6)
    assert index.item() == 2 * 2 + 1  # ratio index 2, size index 1 (ratio-major)


def test_box_between_grid_points():
    # a 32 x 32 box centred at (16, 16), half-way between the centres 8 and 24 on both axes: the
    # 32 x 32 anchor at (8, 8) overlaps 24 x 24 = 576 of it; union 1024 + 1024 - 576 = 1472
    iou, _ = _best([[0, 0, 32, 32]], (128, 128), sizes=(32,), ratios=(1.0,))
    assert iou.item() == pytest.approx(576 / 1472)
    # with the 45.25 x 22.63 anchors (size 32, ratio 0.5) too, x overlaps 30.63 and y 19.31 of it
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)
    inter = (8 + w / 2) * (8 + h / 2)
    iou, index = _best([[0, 0, 32, 32]], (128, 128))
    assert iou.item() == pytest.approx(inter / (2048 - inter))
    assert index.item() in (0 * 2 + 1, 2 * 2 + 1)  # ratio 0.5 or 2 (the same IoU), size 32


def test_grid_is_clamped_to_anchors_centred_in_the_image():
    # a 100 x 16 image keeps the centres 8, 24, ..., 88 (104 lies outside); box x 94..100
    # (centre 97, nearest grid point 104) -> the 16 x 16 anchor at 88 spans 80..96: overlap 2 x 16,
    # union 6 * 16 + 256 - 32 = 320
    iou, index = _best([[94, 0, 100, 16]], (16, 100), sizes=(16,), ratios=(1.0,))
    assert iou.item() == pytest.approx(32 / 320)
    # an image with no anchor centred inside it (4 px wide, the first centre is at 8): nothing
    iou, _ = _best([[0, 0, 4, 4]], (4, 4))
    assert iou.item() == 0.0


def test_empty_input():
    iou, index = best_anchor_iou(torch.zeros(0, 4), torch.zeros(0, 2), **GRID)
    assert iou.shape == (0,) and index.shape == (0,)


@pytest.mark.parametrize("stride,offset,sizes,ratios", [
    (16, 0.5, (16, 32, 64), (0.5, 1.0, 2.0)),
    (16, 0.0, (24, 100), (0.33, 1.0)),
    (8, 0.5, (10.5, 37.2, 140.0), (0.7, 1.6, 3.0)),
])
def test_matches_brute_force(stride, offset, sizes, ratios):
    """The best IoU over every anchor the RPN uses (AnchorGenerator's grid on the padded
    feature map, centred inside the image) equals the nearest-centre computation."""
    g = torch.Generator().manual_seed(stride * 100 + int(offset * 10))
    gen = AnchorGenerator(sizes=sizes, ratios=ratios, stride=stride, offset=offset)
    for _ in range(30):
        h, w = torch.randint(12, 260, (2,), generator=g).tolist()
        x1 = torch.rand(25, generator=g) * (w - 1)
        y1 = torch.rand(25, generator=g) * (h - 1)
        x2 = x1 + torch.rand(25, generator=g) * (w - x1) + 0.5
        y2 = y1 + torch.rand(25, generator=g) * (h - y1) + 0.5
        boxes = torch.stack((x1, y1, x2, y2), dim=1)
        feature = (-(-h // 32) * 32 // stride, -(-w // 32) * 32 // stride)  # padded batch
        anchors = gen.grid_anchors(feature).double()
        # the centres exactly ((index // A) % Wf + offset) * stride, not from float32 corners
        # (their rounding decides a centre lying exactly on the image's border either way)
        cell = torch.arange(len(anchors)) // gen.num_anchors_per_location
        cx = (cell % feature[1] + offset) * stride
        cy = (cell // feature[1] + offset) * stride
        anchors = anchors[(cx >= 0) & (cy >= 0) & (cx < w) & (cy < h)]
        iou, index = best_anchor_iou(boxes, torch.tensor([[h, w]] * 25), sizes=sizes,
                                     ratios=ratios, stride=stride, offset=offset)
        expected = box_iou(boxes.double(), anchors).amax(dim=1)
        assert torch.allclose(iou, expected, atol=1e-5)
        # the reported shape reaches the best IoU somewhere on the grid
        per_shape = box_iou(boxes.double(), anchors).view(25, -1, len(sizes) * len(ratios))
        reached = per_shape.amax(dim=1).gather(1, index[:, None])[:, 0]
        assert torch.allclose(reached, expected, atol=1e-5)


def test_coverage_by_hand():
    cov = anchor_coverage(torch.tensor([0.4, 0.5, 0.69, 0.7, 0.9]))
    assert cov == {0.5: pytest.approx(4 / 5), 0.7: pytest.approx(2 / 5)}
    assert anchor_coverage(torch.tensor([0.2]), thresholds=(0.1,)) == {0.1: 1.0}
    assert anchor_coverage(torch.zeros(0)) == {0.5: 0.0, 0.7: 0.0}  # no boxes: no NaN


def _grid_boxes(sizes, ratios, n, seed, jitter=0.05):
    """(w, h) drawn around the shapes of a known grid (log-normal jitter)."""
    g = torch.Generator().manual_seed(seed)
    shapes = anchor_shapes(sizes, ratios)
    pick = torch.randint(len(shapes), (n,), generator=g)
    return shapes[pick] * torch.exp(torch.randn(n, 2, generator=g, dtype=torch.float64) * jitter)


def test_fit_is_deterministic_and_shaped():
    wh = _grid_boxes((20, 45, 90), (0.5, 1.0, 2.0), 600, seed=1, jitter=0.3)
    first = fit_anchors(wh, num_sizes=3, num_ratios=3, seed=7)
    assert fit_anchors(wh, num_sizes=3, num_ratios=3, seed=7) == first
    sizes, ratios = fit_anchors(wh, num_sizes=4, num_ratios=2, seed=7)
    assert len(sizes) == 4 and len(ratios) == 2
    assert sizes == sorted(sizes) and ratios == sorted(ratios)
    assert all(round(s, 1) == s > 0 for s in sizes) and all(round(r, 2) == r > 0 for r in ratios)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_a_known_grid(seed):
    sizes, ratios = (12.0, 40.0, 150.0), (0.4, 1.0, 2.5)
    fitted_sizes, fitted_ratios = fit_anchors(_grid_boxes(sizes, ratios, 900, seed),
                                              num_sizes=3, num_ratios=3, seed=seed)
    assert fitted_sizes == pytest.approx(sizes, rel=0.1)
    assert fitted_ratios == pytest.approx(ratios, rel=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fit_beats_a_bad_hand_set_grid(seed):
    g = torch.Generator().manual_seed(seed)
    wh = torch.exp(torch.randn(2000, 2, generator=g, dtype=torch.float64) * 0.5 + 3.0)
    for bad in [((128, 256, 512), (0.5, 1.0, 2.0)), ((16, 32, 64), (1.0, 1.5, 2.0))]:
        fitted = fit_anchors(wh, num_sizes=3, num_ratios=3, seed=seed)
        assert grid_shape_iou(wh, *fitted).mean() > grid_shape_iou(wh, *bad).mean()


def test_fit_only_what_is_free():
    wh = _grid_boxes((20, 60), (0.5, 2.0), 400, seed=3)
    sizes, ratios = fit_anchors(wh, num_sizes=0, num_ratios=2, sizes=[20, 60], seed=0)
    assert sizes == [20.0, 60.0] and ratios == pytest.approx([0.5, 2.0], rel=0.1)
    sizes, ratios = fit_anchors(wh, num_sizes=2, num_ratios=0, ratios=[1.0], seed=0)
    assert ratios == [1.0] and len(sizes) == 2


def test_fit_ignores_degenerate_boxes_and_refuses_too_few():
    wh = _grid_boxes((20, 60), (1.0,), 50, seed=4)
    bad = torch.tensor([[0.0, 5.0], [3.0, -1.0], [math.nan, 2.0], [math.inf, 4.0]],
                       dtype=torch.float64)
    assert (fit_anchors(torch.cat((wh, bad)), num_sizes=2, num_ratios=1, seed=0)
            == fit_anchors(wh, num_sizes=2, num_ratios=1, seed=0))
    with pytest.raises(ValueError, match="at least 9 boxes"):
        fit_anchors(torch.cat((wh[:8], bad)), num_sizes=3, num_ratios=3, seed=0)


def test_fit_with_identical_boxes():
    """Every box the same shape: every cluster lands on it (no NaN, no crash)."""
    sizes, ratios = fit_anchors(torch.full((30, 2), 24.0), num_sizes=3, num_ratios=3, seed=0)
    assert len(sizes) == 3 and len(ratios) == 3
    assert grid_shape_iou(torch.full((1, 2), 24.0), sizes, ratios).item() > 0.95


def test_grid_score_by_hand():
    # one box exactly on an anchor (IoU 1), one half-way between centres (576 / 1472), one in an
    # image too small for any anchor centre (0): coverage at 0.5 and 0.7 is 1/3 each
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0], [0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 4.0, 4.0]])
    sizes = torch.tensor([[128, 128], [128, 128], [4, 4]])
    score = grid_score(boxes, sizes, stride=16, offset=0.5)
    expected = 1 / 3 + 1 / 3 + (1 + 576 / 1472 + 0) / 3
    assert score(torch.tensor([32.0]), torch.tensor([1.0])) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_never_scores_below_a_start(seed):
    """With ``starts``, the refined grid scores at least as well as the start (before rounding,
    which moves a value by at most 0.05 px or 0.005)."""
    g = torch.Generator().manual_seed(seed)
    n = 500
    wh = torch.exp(torch.randn(n, 2, generator=g) * 0.5 + 3.0)
    x1 = torch.rand(n, generator=g) * (256 - wh[:, 0])
    y1 = torch.rand(n, generator=g) * (256 - wh[:, 1])
    boxes = torch.cat((torch.stack((x1, y1), 1), torch.stack((x1, y1), 1) + wh), dim=1)
    score = grid_score(boxes, torch.full((n, 2), 256), stride=16, offset=0.5)
    start = ([18.0, 25.0, 40.0], [0.6, 1.0, 1.7])
    sizes, ratios = fit_anchors(wh, num_sizes=3, num_ratios=3, seed=seed, score=score,
                                starts=[start])
    as_tensors = [torch.tensor(v, dtype=torch.float64) for v in (sizes, ratios)]
    start_score = score(*[torch.tensor(v, dtype=torch.float64) for v in start])
    assert score(*as_tensors) >= start_score - 0.01
    with pytest.raises(ValueError, match="start grid"):
        fit_anchors(wh, num_sizes=3, num_ratios=3, starts=[([1.0], [1.0])])
