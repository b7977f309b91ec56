"""The data inspection's pictures (detector/inspection/data_plots.py): the contact sheet's grid,
de-normalisation of the transforms' output, seeded sample choice, and boxes.png drawn with names
that would be mathtext."""

from __future__ import annotations

import numpy as np
import torch

from detector.data import build_transforms
from detector.inspection.data_plots import (
    anchor_shapes,
    contact_sheet,
    denormalize,
    plot_boxes,
    sample_indices,
)
from detector.inspection.data_stats import AnchorSet
from detector.ops.anchors import AnchorGenerator


def test_contact_sheet_grid_by_hand():
    tiles = [np.full((10, 20, 3), 200, np.uint8)] * 4 + [np.full((12, 8, 3), 100, np.uint8)]
    sheet = contact_sheet(tiles, gap=4)
    # 5 tiles: 3 columns x 2 rows of 12 x 20 cells with 4 px around each
    assert sheet.shape == (2 * (12 + 4) + 4, 3 * (20 + 4) + 4, 3)
    assert (sheet[4:14, 4:24] == 200).all() and (sheet[14:16, 4:24] == 40).all()
    assert (sheet[20:32, 28:36] == 100).all()  # the fifth: row 1, column 1


def test_denormalize_inverts_the_transforms():
    image = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    out = build_transforms(train=False, min_size=None)(image=image, boxes=np.zeros((0, 4)),
                                                       labels=np.zeros(0))
    assert np.array_equal(denormalize(out["image"]), image)


def test_sample_indices_are_distinct_seeded_and_capped():
    first = sample_indices(10, 4, seed=3)
    assert first == sample_indices(10, 4, seed=3) and len(set(first)) == 4
    assert sorted(sample_indices(3, 16, seed=0)) == [0, 1, 2]


def test_anchor_shapes_are_the_generators():
    anchors = AnchorSet(sizes=(32.0, 64.0), ratios=(0.5, 2.0), stride=16, offset=0.5)
    cell = AnchorGenerator(sizes=anchors.sizes, ratios=anchors.ratios).cell_anchors(
        dtype=torch.float64)
    assert torch.allclose(anchor_shapes(anchors), cell[:, 2:] - cell[:, :2])


def test_boxes_figure_with_mathtext_names_and_many_classes(tmp_path):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 4 + torch.rand(300, 2, generator=g) * 200], dim=1)
    labels = torch.randint(1, 13, (300,), generator=g)
    names = ["$\\frac{1}{", "a_b^c"] + [f"class {k}" for k in range(10)]
    anchors = AnchorSet(sizes=(32.0, 64.0, 128.0), ratios=(0.5, 1.0, 2.0), stride=16, offset=0.5)
    path = plot_boxes(tmp_path / "boxes.png", boxes=boxes, labels=labels, class_names=names,
                      anchors=anchors, fitted=AnchorSet(sizes=(40.0,), ratios=(1.0,), stride=16,
                                                        offset=0.5, source="fitted"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
