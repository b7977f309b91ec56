"""D-ECE and the reliability diagram against hand values; the confusion matrix on a hand case;
per-class training frequency counted from a small dataset."""

from __future__ import annotations

import numpy as np
import pytest

from detector.study.analysis import class_frequency
from detector.study.calibration import d_ece, reliability
from detector.study.confusion import confusion_matrix
from detector.study.errors import detections, ground_truth


def test_d_ece_equals_the_hand_value():
    """7 bins of 0.1 over [0.3, 1]; 0.2 is below min_score. Bin [0.3, 0.4): one TP at 0.35
    (gap 0.65); [0.4, 0.5): one FP at 0.45 (gap 0.45); [0.9, 1]: 0.95, 0.92 (TP), 0.91 (FP):
    confidence 2.78 / 3, precision 2 / 3, gap 0.26. D-ECE = (0.65 + 0.45 + 3 x 0.26) / 5."""
    scores = np.array([0.35, 0.45, 0.95, 0.92, 0.91, 0.2])
    is_tp = np.array([True, False, True, True, False, True])
    diagram = reliability(scores, is_tp, bins=7, min_score=0.3)
    assert diagram.count.tolist() == [1, 1, 0, 0, 0, 0, 3]
    assert diagram.precision[-1] == pytest.approx(2 / 3)
    assert diagram.confidence[-1] == pytest.approx(2.78 / 3)
    assert np.isnan(diagram.precision[2])
    assert diagram.d_ece == pytest.approx(1.88 / 5)


def test_overconfident_and_calibrated_sets():
    # every detection scored 0.9, half of them right: off by 0.4 everywhere
    assert d_ece(np.full(10, 0.9), np.arange(10) % 2 == 0) == pytest.approx(0.4)
    # right with probability equal to the score: D-ECE ~ 0 (binning and sampling noise only)
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 200_000)
    assert d_ece(scores, rng.uniform(0, 1, scores.size) < scores) < 0.01
    assert d_ece(np.array([0.1]), np.array([True])) is None  # nothing above min_score


def _coco(annotations: list[dict]) -> dict:
    return {"images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100}
                       for i in (1, 2)],
            "annotations": [{"id": n + 1, "iscrowd": 0, "area": 1.0, **a}
                            for n, a in enumerate(annotations)],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def _det(image_id, xyxy, score, label):
    x1, y1, x2, y2 = xyxy
    return {"image_id": image_id, "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score}


def test_confusion_matrix_on_a_hand_case():
    coco = _coco([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                  {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10]},
                  {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10]}])
    dets = [_det(1, (0, 0, 10, 10), 0.9, 1),     # a on a: right
            _det(1, (20, 20, 30, 30), 0.8, 2 - 1),  # a on the b box: b seen as a
            _det(1, (50, 50, 60, 60), 0.7, 2),   # b on nothing
            _det(1, (0, 0, 10, 9), 0.6, 2),      # b on the a box, already taken: background
            _det(1, (20, 20, 30, 30), 0.3, 2)]   # below min_score: left out
    matrix = confusion_matrix(ground_truth(coco), detections(dets), category_ids=[1, 2],
                              min_score=0.5)
    # rows: true a, b, background; columns: predicted a, b, background (the b of image 2 missed)
    assert matrix.tolist() == [[1, 0, 0], [1, 0, 1], [0, 2, 0]]


def test_class_frequency_counts_instances_per_class_of_a_small_dataset():
    coco = _coco([{"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1]},
                  {"image_id": 2, "category_id": 2, "bbox": [0, 0, 1, 1]},
                  {"image_id": 2, "category_id": 2, "bbox": [0, 0, 1, 1], "iscrowd": 1}])
    assert class_frequency(coco) == {"a": 0, "b": 2}  # crowd regions are no instances
