"""Proposal recall: best IoU per ground-truth box over the first n proposals, per class and size."""

import pytest
import torch
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from detector.evaluation.proposal_recall import (
    best_proposal_iou,
    format_proposal_recall_table,
    proposal_recall,
)


def test_best_iou_by_hand_for_each_limit():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    proposals = torch.tensor([
        [0.0, 0.0, 10.0, 5.0],     # IoU 0.5 with the first box
        [50.0, 50.0, 60.0, 60.0],  # exact on the second
        [0.0, 0.0, 10.0, 10.0],    # exact on the first, third in line
    ])
    best = best_proposal_iou(gt, proposals, limits=(1, 2, 3, 1000))
    expected = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(best, expected)


def test_no_proposals_or_no_boxes():
    assert best_proposal_iou(torch.zeros(2, 4), torch.zeros(0, 4), (5,)).tolist() == [[0.0], [0.0]]
    assert best_proposal_iou(torch.zeros(0, 4), torch.rand(3, 4), (1, 2)).shape == (0, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_iou_matches_a_plain_loop(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(7, 2, generator=g) * 50
    gt = torch.cat((xy, xy + 5 + torch.rand(7, 2, generator=g) * 30), dim=1)
    xy = torch.rand(40, 2, generator=g) * 50
    proposals = torch.cat((xy, xy + 5 + torch.rand(40, 2, generator=g) * 30), dim=1)
    limits = (1, 5, 17, 40)
    best = best_proposal_iou(gt, proposals, limits)
    for j, n in enumerate(limits):
        for i in range(len(gt)):
            ref = max(float(box_iou(gt[i:i + 1], proposals[k:k + 1])) for k in range(n))
            assert best[i, j].item() == pytest.approx(ref, abs=1e-6)


def _coco(annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
        "categories": [{"id": 3, "name": "big"}, {"id": 7, "name": "tiny"}],
        "annotations": [{"id": i + 1, "iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], **a}
                        for i, a in enumerate(annotations)],
    }
    coco.createIndex()
    return coco


def test_recall_per_class_and_size_by_hand():
    coco = _coco([
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100]},   # large, found exactly
        {"image_id": 1, "category_id": 7, "bbox": [150, 150, 10, 10]},  # small, missed
        {"image_id": 2, "category_id": 7, "bbox": [20, 20, 10, 10]},    # small, IoU 0.5 only
        {"image_id": 2, "category_id": 3, "bbox": [0, 0, 50, 50], "iscrowd": 1},  # not counted
    ])
    proposals = {
        1: torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 10.0, 10.0]]),
        2: torch.tensor([[20.0, 20.0, 30.0, 25.0]]),
    }
    result = proposal_recall(coco, proposals, cat_id_to_name={3: "big", 7: "tiny"},
                             iou_thresholds=(0.5, 0.7), limits=(1, 100))
    rows = result["rows"]
    assert result["limits"] == [1, 100] and result["iou_thresholds"] == [0.5, 0.7]
    assert rows["all"]["boxes"] == 3 and rows["big"]["boxes"] == 1 and rows["tiny"]["boxes"] == 2
    assert rows["all"]["recall"] == [[pytest.approx(2 / 3)] * 2, [pytest.approx(1 / 3)] * 2]
    assert rows["big"]["recall"] == [[1.0, 1.0], [1.0, 1.0]]
    assert rows["tiny"]["recall"] == [[0.5, 0.5], [0.0, 0.0]]
    assert rows["small"]["boxes"] == 2 and rows["small"]["recall"] == rows["tiny"]["recall"]
    assert rows["large"]["boxes"] == 1 and rows["medium"]["boxes"] == 0
    assert rows["medium"]["recall"] == [[None, None], [None, None]]
    assert rows["tiny"]["mean_best_iou"] == [pytest.approx(0.25), pytest.approx(0.25)]
    table = format_proposal_recall_table(result)
    assert "R50@1" in table and "R70@100" in table
    line = next(row for row in table.splitlines() if row.startswith("tiny"))
    assert line.split()[1:] == ["2", "0.500", "0.500", "0.000", "0.000"]
    assert next(r for r in table.splitlines() if r.startswith("medium")).split()[2:] == ["-"] * 4


def test_only_the_given_images_count():
    coco = _coco([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10]},
                  {"image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10]}])
    result = proposal_recall(coco, {2: torch.tensor([[0.0, 0.0, 10.0, 10.0]])},
                             cat_id_to_name={3: "big", 7: "tiny"}, limits=(10,))
    assert result["rows"]["all"]["boxes"] == 1 and result["rows"]["all"]["recall"][0] == [1.0]
