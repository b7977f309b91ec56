"""COCO evaluation on tiny hand-built ground truths whose AP can be worked out on paper.

pycocotools computes precision as tp / (tp + fp + eps) with eps = 2.2e-16, so a class whose only
GT is found reaches 0.9999999999999998, not 1.0: "perfect" is asserted to 1e-12.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.evaluation import (
    STAT_NAMES,
    detections_to_coco_results,
    evaluate_coco,
    format_coco_table,
    format_per_class_table,
    save_metrics,
    save_results,
)

# Non-contiguous category ids; "bird" (9) never has a GT box.
CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "bird"}]
LABEL_TO_CAT = {1: 3, 2: 7, 3: 9}
EXACT = 1e-12


def make_gt(annotations: list[tuple[int, int, list[float]]]) -> COCO:
    """A COCO ground truth over images 1..3 (200x200) from (image_id, category_id, xywh)."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],
        "categories": CATEGORIES,
        "annotations": [
            {"id": n + 1, "image_id": img, "category_id": cat, "bbox": box,
             "area": box[2] * box[3], "iscrowd": 0}
            for n, (img, cat, box) in enumerate(annotations)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def det(image_id: int, boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {
        "image_id": image_id,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def xyxy(box: list[float]) -> list[float]:
    return [box[0], box[1], box[0] + box[2], box[1] + box[3]]


# One GT per area range: medium cat and dog in image 1, a large cat in 2, a small dog in 3.
MIXED_GT = [
    (1, 3, [10.0, 20.0, 100.0, 50.0]),
    (1, 7, [120.0, 30.0, 60.0, 80.0]),
    (2, 3, [0.0, 0.0, 150.0, 120.0]),
    (3, 7, [5.0, 5.0, 20.0, 20.0]),
]
ONE_LARGE_CAT = [(1, 3, [0.0, 0.0, 100.0, 100.0])]


def perfect_detections(annotations) -> list[dict]:
    by_image = defaultdict(list)
    for img, cat, box in annotations:
        by_image[img].append((xyxy(box), {3: 1, 7: 2}[cat]))
    return [
        det(img, [b for b, _ in items], [1.0] * len(items), [lab for _, lab in items])
        for img, items in by_image.items()
    ]


# --- conversion ------------------------------------------------------------------------------


def test_results_convert_xyxy_to_xywh_and_keep_original_category_ids():
    dets = [
        det(5, [[10.0, 20.0, 110.5, 70.25], [250.82, 168.26, 320.93, 233.14]], [0.93, 0.5], [2, 1]),
        det(6, [], [], []),
    ]
    results = detections_to_coco_results(dets, label_to_cat_id=LABEL_TO_CAT)
    assert results == [
        {"image_id": 5, "category_id": 7, "bbox": [10.0, 20.0, 100.5, 50.25], "score": 0.93},
        # float32 corners, rounded back to the 0.01 px of the annotation they came from
        {"image_id": 5, "category_id": 3, "bbox": [250.82, 168.26, 70.11, 64.88], "score": 0.5},
    ]
    assert all(isinstance(v, float) for r in results for v in r["bbox"])
    assert all(type(r["category_id"]) is int and type(r["image_id"]) is int for r in results)


def test_unmapped_label_is_an_error():
    with pytest.raises(ValueError, match="label_to_cat_id"):
        detections_to_coco_results([det(1, [[0, 0, 1, 1]], [1.0], [4])], label_to_cat_id=LABEL_TO_CAT)


# --- evaluation ------------------------------------------------------------------------------


def test_perfect_detections_give_ap_one_everywhere():
    metrics = evaluate_coco(
        make_gt(MIXED_GT), perfect_detections(MIXED_GT), label_to_cat_id=LABEL_TO_CAT
    )
    for name in STAT_NAMES:
        assert metrics[name] == pytest.approx(1.0, abs=EXACT), name
    assert metrics["per_class"]["cat"] == pytest.approx(1.0, abs=EXACT)
    assert metrics["per_class"]["dog"] == pytest.approx(1.0, abs=EXACT)
    assert metrics["per_class"]["bird"] is None  # no GT: undefined, not 0 and not NaN
    assert list(metrics["per_class"]) == ["cat", "dog", "bird"]
    assert metrics["num_images"] == 3
    assert metrics["num_detections"] == 4


def test_no_detections_warn_and_score_zero():
    with pytest.warns(UserWarning, match="no detections"):
        metrics = evaluate_coco(make_gt(MIXED_GT), [], label_to_cat_id=LABEL_TO_CAT)
    assert {name: metrics[name] for name in STAT_NAMES} == dict.fromkeys(STAT_NAMES, 0.0)
    assert metrics["per_class"] == {"cat": 0.0, "dog": 0.0, "bird": None}
    assert metrics["num_detections"] == 0


def test_images_without_detections_also_count_as_empty():
    with pytest.warns(UserWarning, match="no detections"):
        metrics = evaluate_coco(make_gt(MIXED_GT), [det(1, [], [], [])], label_to_cat_id=LABEL_TO_CAT)
    assert metrics["AP"] == 0.0


def test_images_without_detections_count_as_misses_beside_images_with_them():
    # image 1: both of its GT boxes found (a medium cat and dog); image 2: an empty detection
    # entry; image 3: no entry at all. Each class has one of its two GTs found: precision 1 up to
    # recall 1/2, then nothing -> 51 of the 101 recall points at every IoU threshold.
    dets = [perfect_detections(MIXED_GT)[0], det(2, [], [], [])]
    assert dets[0]["image_id"] == 1 and len(dets[0]["boxes"]) == 2
    metrics = evaluate_coco(make_gt(MIXED_GT), dets, label_to_cat_id=LABEL_TO_CAT)
    assert metrics["num_images"] == 3
    assert metrics["AP"] == pytest.approx(51 / 101, abs=EXACT)
    assert metrics["AR100"] == pytest.approx(0.5, abs=EXACT)
    assert metrics["per_class"]["cat"] == pytest.approx(51 / 101, abs=EXACT)
    assert metrics["per_class"]["dog"] == pytest.approx(51 / 101, abs=EXACT)


def test_per_class_ap_uses_100_detections_per_image():
    # 12 cats in image 1, all found: with 100 detections per image AP is 1; read at maxDets=10
    # it would be 84/101 (recall stops at 10/12), at maxDets=1 9/101.
    boxes = [[10.0 + 45 * (i % 4), 10.0 + 45 * (i // 4), 30.0, 30.0] for i in range(12)]
    gt = make_gt([(1, 3, box) for box in boxes] + [(2, 7, [0.0, 0.0, 100.0, 100.0])])
    scores = [1.0 - 0.01 * i for i in range(12)]
    dets = [det(1, [xyxy(b) for b in boxes], scores, [1] * 12),
            det(2, [[0.0, 0.0, 100.0, 100.0]], [0.9], [2])]
    metrics = evaluate_coco(gt, dets, label_to_cat_id=LABEL_TO_CAT)
    assert metrics["AR10"] == pytest.approx((10 / 12 + 1) / 2, abs=EXACT)  # the 10-det cap bites
    assert metrics["per_class"]["cat"] == pytest.approx(1.0, abs=EXACT)
    assert metrics["per_class"]["dog"] == pytest.approx(1.0, abs=EXACT)
    assert metrics["AP"] == pytest.approx(1.0, abs=EXACT)


def test_iou_0625_matches_at_three_of_ten_thresholds():
    # GT [0,0,100,100] vs det [0,0,100,62.5]: IoU = 6250 / 10000 = 0.625 >= 0.50, 0.55, 0.60 only.
    metrics = evaluate_coco(
        make_gt(ONE_LARGE_CAT), [det(1, [[0.0, 0.0, 100.0, 62.5]], [0.9], [1])],
        label_to_cat_id=LABEL_TO_CAT,
    )
    assert metrics["AP"] == pytest.approx(3 / 10, abs=EXACT)
    assert metrics["AP50"] == pytest.approx(1.0, abs=EXACT)
    assert metrics["AP75"] == 0.0
    assert metrics["APl"] == pytest.approx(3 / 10, abs=EXACT)
    assert metrics["AR100"] == pytest.approx(3 / 10, abs=EXACT)
    # the only GT is large: small/medium ranges have nothing to average -> None
    for name in ("APs", "APm", "ARs", "ARm"):
        assert metrics[name] is None, name


def test_false_positive_below_the_true_positive_costs_nothing():
    # sorted by score: TP, FP -> precision 1 up to recall 1, AP = 1
    dets = [det(1, [[0.0, 0.0, 100.0, 100.0], [150.0, 150.0, 190.0, 190.0]], [0.9, 0.5], [1, 1])]
    metrics = evaluate_coco(make_gt(ONE_LARGE_CAT), dets, label_to_cat_id=LABEL_TO_CAT)
    assert metrics["AP"] == pytest.approx(1.0, abs=EXACT)


def test_false_positive_above_the_true_positive_halves_ap():
    # sorted: FP (p=0, r=0), TP (p=1/2, r=1); the interpolated envelope is 1/2 at all 101 recall
    # points and all 10 IoU thresholds -> AP = 0.5. The FP sits in another image: same effect.
    dets = [
        det(1, [[0.0, 0.0, 100.0, 100.0]], [0.5], [1]),
        det(2, [[0.0, 0.0, 100.0, 100.0]], [0.9], [1]),
    ]
    metrics = evaluate_coco(make_gt(ONE_LARGE_CAT), dets, label_to_cat_id=LABEL_TO_CAT)
    assert metrics["AP"] == pytest.approx(0.5, abs=EXACT)
    assert metrics["AP50"] == pytest.approx(0.5, abs=EXACT)
    assert metrics["AR100"] == pytest.approx(1.0, abs=EXACT)


def test_category_ids_round_trip_through_the_mapping():
    dets = [det(1, [[0.0, 0.0, 100.0, 100.0]], [0.9], [1])]
    gt = make_gt(ONE_LARGE_CAT)
    right = evaluate_coco(gt, dets, label_to_cat_id={1: 3, 2: 7})
    swapped = evaluate_coco(gt, dets, label_to_cat_id={1: 7, 2: 3})
    assert right["AP"] == pytest.approx(1.0, abs=EXACT)
    assert swapped["AP"] == 0.0  # the box is now a "dog" FP and the cat is missed
    assert swapped["per_class"] == {"cat": 0.0, "dog": None, "bird": None}


def test_ready_results_and_class_names_are_accepted():
    results = [{"image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 100.0, 100.0], "score": 0.9}]
    metrics = evaluate_coco(
        make_gt(ONE_LARGE_CAT), results, label_to_cat_id=LABEL_TO_CAT,
        class_names=["Felis", "Canis", "Aves"],
    )
    assert list(metrics["per_class"]) == ["Felis", "Canis", "Aves"]
    assert metrics["AP"] == pytest.approx(1.0, abs=EXACT)
    assert results[0].keys() == {"image_id", "category_id", "bbox", "score"}  # not mutated


def test_img_ids_restricts_the_evaluated_images():
    # only image 2 is evaluated: its large cat is found; the misses in images 1 and 3 don't count
    metrics = evaluate_coco(
        make_gt(MIXED_GT), [det(2, [[0.0, 0.0, 150.0, 120.0]], [1.0], [1])],
        label_to_cat_id=LABEL_TO_CAT, img_ids=[2],
    )
    assert metrics["AP"] == pytest.approx(1.0, abs=EXACT)
    assert metrics["num_images"] == 1
    assert metrics["per_class"]["dog"] is None


def test_detections_need_a_mapping_and_known_images():
    with pytest.raises(ValueError, match="label_to_cat_id"):
        evaluate_coco(make_gt(ONE_LARGE_CAT), [det(1, [[0, 0, 1, 1]], [1.0], [1])])
    with pytest.raises(ValueError, match="absent"):
        evaluate_coco(make_gt(ONE_LARGE_CAT), [det(42, [[0, 0, 1, 1]], [1.0], [1])],
                      label_to_cat_id=LABEL_TO_CAT)


# --- formatting and files --------------------------------------------------------------------


def test_coco_table_matches_pycocotools_summary():
    gt = make_gt(MIXED_GT)
    dets = perfect_detections(MIXED_GT)
    dets[0]["scores"][:] = 0.4
    dets.append(det(2, [[0.0, 0.0, 50.0, 50.0]], [0.8], [2]))  # a dog FP above the cat TP
    results = detections_to_coco_results(dets, label_to_cat_id=LABEL_TO_CAT)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes([dict(r) for r in results]), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluator.summarize()
    table = format_coco_table(evaluate_coco(gt, results))
    assert table == printed.getvalue().rstrip("\n")


def test_coco_table_marks_undefined_stats():
    table = format_coco_table({**dict.fromkeys(STAT_NAMES, 0.25), "APs": None})
    lines = table.splitlines()
    assert len(lines) == 12
    assert lines[0] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.250"
    assert lines[3].endswith("area= small | maxDets=100 ] =   n/a")


def test_per_class_table_keeps_order():
    table = format_per_class_table({"per_class": {"zebra": 0.5, "ant": None, "cat": 1.0}})
    assert table.splitlines()[2:] == ["zebra  0.500", "ant      n/a", "cat    1.000"]


def test_json_writers_round_trip(tmp_path):
    metrics = {"AP": 0.5, "APs": None, "per_class": {"cat": 0.5}}
    results = [{"image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.9}]
    assert json.loads(save_metrics(tmp_path / "out" / "m.json", metrics).read_text()) == metrics
    assert json.loads(save_results(tmp_path / "out" / "r.json", results).read_text()) == results
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.json", "r.json"]


# --- real data -------------------------------------------------------------------------------


def test_coco_tiny_ground_truth_fed_back_scores_ap_one(coco_tiny_root):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_tiny_root / "annotations" / "instances_val2017.json"))
    cat_to_label = {cid: i + 1 for i, cid in enumerate(sorted(gt.getCatIds()))}
    # crowd regions are ignored by COCOeval (neither missed nor matched): give them no detection
    by_image: dict[int, list] = {img: [] for img in gt.getImgIds()}
    for ann in gt.dataset["annotations"]:
        if not ann["iscrowd"]:
            by_image[ann["image_id"]].append((xyxy(ann["bbox"]), cat_to_label[ann["category_id"]]))
    dets = [
        det(img, [b for b, _ in items], [1.0] * len(items), [lab for _, lab in items])
        for img, items in by_image.items()
    ]
    metrics = evaluate_coco(gt, dets, label_to_cat_id={v: k for k, v in cat_to_label.items()})
    assert metrics["AP"] == pytest.approx(1.0, abs=EXACT)
    assert metrics["AP50"] == pytest.approx(1.0, abs=EXACT)
    assert metrics["AR100"] == pytest.approx(1.0, abs=EXACT)
    assert metrics["num_images"] == 80
    assert all(ap == pytest.approx(1.0, abs=EXACT) for ap in metrics["per_class"].values())


# --- precision-recall points -------------------------------------------------------------------


def test_pr_curve_at_iou_05_matches_cocoeval_and_the_hand_computed_curve():
    # two cats; by score: a hit (P 1, R 1/2), a miss far away (P 1/2), the second hit (P 2/3, R 1).
    # Interpolated precision: 1 up to recall 0.50, then 2/3 up to 1.00; the dog (GT, never
    # detected) is 0 everywhere; the bird (no GT) is undefined.
    gt = make_gt([(1, 3, [10.0, 20.0, 100.0, 50.0]), (2, 3, [0.0, 0.0, 150.0, 120.0]),
                  (1, 7, [120.0, 30.0, 60.0, 80.0])])
    dets = [det(1, [xyxy([10.0, 20.0, 100.0, 50.0])], [0.9], [1]),
            det(2, [[160.0, 160.0, 190.0, 190.0], xyxy([0.0, 0.0, 150.0, 120.0])], [0.8, 0.7],
                [1, 1])]
    pr = evaluate_coco(gt, dets, label_to_cat_id=LABEL_TO_CAT)["pr_iou50"]
    assert pr["iou"] == 0.5 and len(pr["recall"]) == 101
    assert pr["recall"][50] == pytest.approx(0.5) and pr["recall"][-1] == pytest.approx(1.0)
    assert list(pr["precision"]) == ["cat", "dog", "bird"]
    cat = pr["precision"]["cat"]
    assert cat[:51] == pytest.approx([1.0] * 51, abs=EXACT)
    assert cat[51:] == pytest.approx([2 / 3] * 50, abs=EXACT)
    assert pr["precision"]["dog"] == [0.0] * 101
    assert pr["precision"]["bird"] is None

    # the same numbers as pycocotools' own precision array [T, R, K, A, M] at IoU 0.5
    coco_dt = gt.loadRes(detections_to_coco_results(dets, label_to_cat_id=LABEL_TO_CAT))
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(gt, coco_dt, iouType="bbox")
        reference.evaluate()
        reference.accumulate()
    expected = reference.eval["precision"][0, :, :, 0, 2]  # IoU 0.5, area all, 100 detections
    assert cat == expected[:, 0].tolist() and pr["precision"]["dog"] == expected[:, 1].tolist()
    assert (expected[:, 2] == -1).all()
    json.dumps(pr, allow_nan=False)  # saved with the metrics: plain JSON


def test_pr_curve_is_read_at_100_detections_per_image():
    # 12 cats in image 1, all found, best first: precision 1 up to recall 1 at maxDets=100; read
    # at maxDets=10 the curve would stop at recall 10/12 (0 from recall threshold 0.84 on).
    boxes = [[10.0 + 45 * (i % 4), 10.0 + 45 * (i // 4), 30.0, 30.0] for i in range(12)]
    gt = make_gt([(1, 3, box) for box in boxes])
    dets = [det(1, [xyxy(b) for b in boxes], [1.0 - 0.01 * i for i in range(12)], [1] * 12)]
    pr = evaluate_coco(gt, dets, label_to_cat_id=LABEL_TO_CAT)["pr_iou50"]
    assert pr["precision"]["cat"] == pytest.approx([1.0] * 101, abs=EXACT)
