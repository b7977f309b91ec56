"""TIDE-style error decomposition on hand-built sets: each error type's count, and the AP50
gained by fixing it (COCOeval on the corrected detections), against values worked out by hand.

Every scenario has three class-A boxes ``[0, 0, 10, 10]``, one per image 1..3 (some add a
class-B box in image 4). COCOeval's AP50 averages precision at 101 recall thresholds
0, 0.01, ..., 1, each the best precision at that recall or beyond: with three boxes, 34
thresholds reach recall 1/3 (0..0.33), 67 reach 2/3 and all 101 reach 1.
"""

from __future__ import annotations

import numpy as np
import pytest

from detector.study.errors import (
    BKG,
    BOTH,
    CLS,
    ERROR_TYPES,
    classify_errors,
    detections,
    error_dap,
    ground_truth,
)

A, B = 1, 2
BOX = [0, 0, 10, 10]  # xywh == xyxy at the origin


def _gt(with_b: bool = False) -> dict:
    anns = [{"id": i, "image_id": i, "category_id": A, "bbox": BOX, "area": 100.0, "iscrowd": 0}
            for i in (1, 2, 3)]
    if with_b:
        anns.append({"id": 4, "image_id": 4, "category_id": B, "bbox": BOX, "area": 100.0,
                     "iscrowd": 0})
    return {"images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100}
                       for i in (1, 2, 3, 4)],
            "annotations": anns,
            "categories": [{"id": A, "name": "a"}, {"id": B, "name": "b"}]}


def _det(image_id: int, xyxy, score: float, label: int = A) -> dict:
    x1, y1, x2, y2 = xyxy
    return {"image_id": image_id, "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score}


def _tp(image_id: int, score: float = 0.9) -> dict:
    return _det(image_id, (0, 0, 10, 10), score)


ALL_TP = [_tp(1), _tp(2), _tp(3)]
# (name, with a class-B box, detections, expected counts, expected AP50 before, expected dAP)
SCENARIOS = [
    ("perfect", False, ALL_TP, {}, 1.0, {}),
    # two detections on nothing rank first: precision 3/5 at every recall
    ("bkg", False, [_det(1, (50, 50, 60, 60), 0.95), _det(2, (70, 0, 80, 5), 0.96), *ALL_TP],
     {"bkg": 2}, 3 / 5, {"bkg": 2 / 5}),
    # a box of A at IoU 0.3 with box 1, which nothing else found: it is relocated onto it
    ("loc", False, [_det(1, (0, 0, 10, 3), 0.95), _tp(2), _tp(3)], {"loc": 1},
     67 * (2 / 3) / 101, {"loc": 1 - 67 * (2 / 3) / 101}),
    # A on the B box (IoU 1): AP_A 3/4 (it ranks first), AP_B 0 -> relabelled, both 1
    ("cls", True, [_det(4, (0, 0, 10, 10), 0.95), *ALL_TP], {"cls": 1}, (3 / 4 + 0) / 2,
     {"cls": 1 - 3 / 8}),
    # A at IoU 0.3 with the B box: removed, AP_A 1 (AP_B stays 0); the B box is a miss, and
    # without it only class A is averaged
    ("both", True, [_det(4, (0, 0, 10, 3), 0.95), *ALL_TP], {"both": 1, "miss": 1}, 3 / 8,
     {"both": 1 / 2 - 3 / 8, "miss": 3 / 4 - 3 / 8}),
    # box 1 found at 0.99, then again at 0.95: precision 1 up to recall 1/3, then 3/4
    ("dupe", False, [_tp(1, 0.99), _det(1, (0, 0, 10, 9), 0.95), _tp(2), _tp(3)], {"dupe": 1},
     (34 + 67 * 3 / 4) / 101, {"dupe": 1 - (34 + 67 * 3 / 4) / 101}),
    # box 3 never found: precision 1 up to recall 2/3
    ("miss", False, [_tp(1), _tp(2)], {"miss": 1}, 67 / 101, {"miss": 34 / 101}),
]


@pytest.mark.parametrize(("name", "with_b", "dets", "counts", "before", "gains"), SCENARIOS,
                         ids=[s[0] for s in SCENARIOS])
def test_counts_and_dap_of_each_error_type(name, with_b, dets, counts, before, gains):
    coco = _gt(with_b)
    gt, det = ground_truth(coco), detections(dets)
    found = classify_errors(gt, det).counts()
    expected_tp = len(dets) - sum(v for k, v in counts.items() if k != "miss")
    assert found == {**dict.fromkeys(ERROR_TYPES, 0), **counts, "tp": expected_tp}
    dap = error_dap(coco, det)
    assert dap["AP50"] == pytest.approx(before, abs=1e-9)
    for kind in ERROR_TYPES:
        assert dap[kind] == pytest.approx(gains.get(kind, 0.0), abs=1e-9), kind


def test_a_loc_error_on_a_box_already_found_is_removed_not_moved():
    """Box 1 is found at 0.9; a poor box of it at 0.95 ranks first: fixing removes it."""
    coco = _gt()
    det = detections([_det(1, (0, 0, 10, 3), 0.95), *ALL_TP])
    analysis = classify_errors(ground_truth(coco), det)
    assert analysis.counts()["loc"] == 1 and analysis.counts()["miss"] == 0
    assert error_dap(coco, det)["loc"] == pytest.approx(1 - 3 / 4)


@pytest.mark.parametrize(("height", "kind"), [(5.0, CLS), (4.9, BOTH), (1.0, BOTH), (0.9, BKG)],
                         ids=["iou 0.5: cls", "iou 0.49: both", "iou 0.1: both", "iou 0.09: bkg"])
def test_cls_both_and_bkg_at_the_iou_thresholds_edges(height, kind):
    """A box of A over the B box [0, 0, 10, 10] with IoU = height / 10."""
    coco = _gt(with_b=True)
    det = detections([_det(4, (0, 0, 10, height), 0.9)])
    assert classify_errors(ground_truth(coco), det).kind.tolist() == [kind]


def test_crowd_boxes_are_ignored_and_never_missed():
    coco = _gt()
    coco["annotations"][0]["iscrowd"] = 1
    analysis = classify_errors(ground_truth(coco), detections([_tp(1), _tp(2)]))
    counts = analysis.counts()
    assert counts["tp"] == 1 and counts["miss"] == 1  # box 3; box 1 is a crowd
    assert sum(counts[k] for k in ("cls", "loc", "both", "dupe", "bkg")) == 0


def test_images_without_ground_truth_and_no_detections_at_all():
    coco = _gt()
    analysis = classify_errors(ground_truth(coco), detections([_det(4, (0, 0, 5, 5), 0.5)]))
    assert analysis.counts() == {**dict.fromkeys(ERROR_TYPES, 0), "bkg": 1, "miss": 3, "tp": 0}
    empty = classify_errors(ground_truth(coco), detections([]))
    assert empty.counts()["miss"] == 3 and len(empty.kind) == 0
    assert error_dap(coco, detections([]))["miss"] == 0.0  # all missed: nothing left to score
    assert np.all(empty.missed)
