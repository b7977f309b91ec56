"""detector.evaluation.voc_eval: the Pascal VOC devkit metric on hand-computed cases, against a
plain-loop reference of the devkit's code (seeded random cases), against COCO's AP50 where the two
must agree, and the checks of a COCO results file."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random

import numpy as np
import pytest
from pycocotools.coco import COCO

from detector.errors import UserError
from detector.evaluation import (
    ResultsFileError,
    evaluate_coco,
    evaluate_voc,
    format_voc_table,
    read_results_file,
)
from detector.evaluation.voc_eval import _iou


def _coco(images: list[int], anns: list[tuple], cats=("A", "B", "C")) -> COCO:
    """GT from (image_id, category_id, [x, y, w, h], difficult) tuples, annotation order kept."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"}
                   for i in images],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(cats)],
        "annotations": [{"id": n + 1, "image_id": img, "category_id": cat, "bbox": list(box),
                         "area": box[2] * box[3], "iscrowd": int(difficult)}
                        for n, (img, cat, box, difficult) in enumerate(anns)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _det(img: int, cat: int, box, score: float) -> dict:
    return {"image_id": img, "category_id": cat, "bbox": list(box), "score": score}


# ---------------------------------------------------------------------------- by hand
# Two images, three classes. A: 2 positives (A1 in image 1, A3 in image 2) + a difficult A2.
# B: one positive, no detections. C: no ground truth, one detection.
HAND_GT = [(1, 1, (0, 0, 10, 10), False),    # A1
           (1, 1, (50, 50, 10, 10), True),   # A2, difficult
           (1, 2, (20, 20, 10, 10), False),  # B1
           (2, 1, (0, 0, 20, 20), False)]    # A3
HAND_DETS = [_det(1, 1, (0, 0, 10, 10), 0.9),    # d1: A1 -> TP        tp 1 fp 0: rec .5, prec 1
             _det(1, 1, (0, 0, 10, 10), 0.8),    # d2: A1 again -> FP  tp 1 fp 1: rec .5, prec .5
             _det(1, 1, (50, 50, 10, 10), 0.7),  # d3: difficult -> ignored (same point again)
             _det(2, 1, (40, 40, 10, 10), 0.6),  # d4: no overlap -> FP tp 1 fp 2: .5, 1/3
             _det(2, 1, (0, 0, 20, 20), 0.5),    # d5: A3 -> TP        tp 2 fp 2: rec 1, prec .5
             _det(1, 3, (20, 20, 10, 10), 0.95)]  # class C: no GT -> AP None
# A, 11-point: t = 0, .1, .2, .3, .4, .5 reach recall .5 with precision 1 (6 x 1); t = .6 .. 1
# only recall 1 with precision .5 (5 x .5): (6 + 2.5) / 11 = 8.5 / 11.
# A, all-point: envelope 1 on recall (0, .5], .5 on (.5, 1]: .5 * 1 + .5 * .5 = .75.
# B: a positive and no detection: 0. mAP over A and B (C has no positives).
HAND_AP = {"voc07": 8.5 / 11, "voc": 0.75}


@pytest.mark.parametrize("metric", ["voc07", "voc"])
def test_hand_computed_case(metric):
    metrics = evaluate_voc(_coco([1, 2], HAND_GT), HAND_DETS, metric=metric)
    prefix = {"voc07": "VOC07", "voc": "VOC"}[metric]
    assert metrics[f"{prefix}_per_class"] == {"A": pytest.approx(HAND_AP[metric], abs=1e-12),
                                              "B": 0.0, "C": None}
    assert metrics[f"{prefix}_positives"] == {"A": 2, "B": 1, "C": 0}
    assert metrics[prefix] == pytest.approx(HAND_AP[metric] / 2, abs=1e-12)
    table = format_voc_table(metrics, metric)
    assert table.splitlines()[0] == f"{prefix} mAP {HAND_AP[metric] / 2:.4f}"
    assert table.splitlines()[-1].split() == ["C", "-", "0"]


def test_the_order_of_the_input_does_not_matter_without_ties():
    shuffled = HAND_DETS[::-1]
    assert evaluate_voc(_coco([1, 2], HAND_GT), shuffled, metric="voc07")["VOC07"] == \
        pytest.approx(8.5 / 22, abs=1e-12)


def test_iou_of_exactly_one_half_is_not_a_match_and_just_above_is():
    gt = _coco([1], [(1, 1, (0, 0, 10, 10), False)], cats=("A",))
    at_half = evaluate_voc(gt, [_det(1, 1, (0, 0, 10, 5), 0.9)], metric="voc")  # 50 / 100
    above = evaluate_voc(gt, [_det(1, 1, (0, 0, 10, 5.01), 0.9)], metric="voc")
    assert (at_half["VOC"], above["VOC"]) == (0.0, 1.0)


def _ten_boxes() -> COCO:
    return _coco([1], [(1, 1, (10 * i, 0, 5, 5), False) for i in range(10)], cats=("A",))


def test_eleven_point_thresholds_are_the_python_devkits_doubles():
    """py-faster-rcnn / detectron2 use np.arange(0., 1.1, 0.1): its 0.3 is 0.30000000000000004,
    which a recall of 3/10 (the double nearest 0.3) does not reach."""
    tps = [_det(1, 1, (10 * i, 0, 5, 5), 0.9 - i / 100) for i in range(3)]
    dets = [*tps, _det(1, 1, (0, 50, 5, 5), 0.5), _det(1, 1, (30, 0, 5, 5), 0.4)]
    # recall .1 .2 .3 .3 .4, precision 1 1 1 .75 .8: t = 0, .1, .2 -> 1; t = 0.30000000000000004
    # and .4 -> .8 (only recall .4 reaches them); t >= .5 -> 0. (1 + 1 + 1 + .8 + .8) / 11
    ap = evaluate_voc(_ten_boxes(), dets, metric="voc07")["VOC07"]
    assert ap == pytest.approx(4.6 / 11, abs=1e-12)


def test_equal_scores_keep_their_input_order():
    """A stable sort: of tied detections the earlier in the input is matched first."""
    hits = [_det(1, 1, (10 * i, 0, 5, 5), 0.5) for i in range(10)]
    misses = [_det(1, 1, (10 * i, 50, 5, 5), 0.5) for i in range(30)]
    # lower-scored misses around them (they come last and change no AP) make numpy's default
    # sort reorder the ties
    low = [_det(1, 1, (10 * i, 70, 5, 5), 0.2) for i in range(60)]
    hits_first = evaluate_voc(_ten_boxes(), low[:30] + hits + misses + low[30:],
                              metric="voc")["VOC"]
    misses_first = evaluate_voc(_ten_boxes(), low[:30] + misses + hits + low[30:],
                                metric="voc")["VOC"]
    assert (hits_first, misses_first) == (1.0, pytest.approx(10 / 40, abs=1e-12))


def test_results_on_images_outside_img_ids_are_left_out_and_their_gt_too():
    gt = _coco([1, 2], HAND_GT)
    only_two = evaluate_voc(gt, HAND_DETS, metric="voc", img_ids=[2])
    # image 2: A3 (1 positive); d4 FP then d5 TP: recall 1 at precision .5 -> AP .5; B, C: none
    assert only_two["VOC_per_class"] == {"A": 0.5, "B": None, "C": None}
    assert only_two["VOC"] == 0.5


def test_no_results_at_all():
    metrics = evaluate_voc(_coco([1, 2], HAND_GT), [], metric="voc07")
    assert metrics["VOC07_per_class"] == {"A": 0.0, "B": 0.0, "C": None}


def test_continuous_iou_equals_the_devkits_inclusive_pixel_iou_on_voc_integers():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a, b = (np.sort(rng.integers(1, 40, size=(2, 2)), axis=0).T.reshape(-1) for _ in range(2))
        a, b = a[[0, 2, 1, 3]], b[[0, 2, 1, 3]]  # (xmin, ymin, xmax, ymax), 1-based inclusive
        iw = max(min(a[2], b[2]) - max(a[0], b[0]) + 1.0, 0.0)
        ih = max(min(a[3], b[3]) - max(a[1], b[1]) + 1.0, 0.0)
        union = ((a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0)
                 + (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0) - iw * ih)
        convert = np.array([-1.0, -1.0, 0.0, 0.0])  # detector.data.voc.voc_to_xyxy
        ours = _iou(a + convert, (b + convert)[None].astype(np.float64))[0]
        assert ours == iw * ih / union  # the same double, not merely close


# ---------------------------------------------------------------------------- reference
def _reference_ap(gt: list[tuple], dets: list[dict], cat: int, use_07: bool) -> float | None:
    """py-faster-rcnn's voc_eval, written out with plain loops (no shared code)."""
    recs = {}
    for img, c, (x, y, w, h), difficult in gt:
        if c == cat:
            recs.setdefault(img, []).append([x, y, x + w, y + h, difficult, False])
    npos = sum(1 for objs in recs.values() for o in objs if not o[4])
    if npos == 0:
        return None
    mine = sorted([d for d in dets if d["category_id"] == cat], key=lambda d: -d["score"])
    tp, fp = [], []
    for d in mine:
        x, y, w, h = d["bbox"]
        best, jmax = -math.inf, -1
        for j, o in enumerate(recs.get(d["image_id"], [])):
            iw = max(min(o[2], x + w) - max(o[0], x), 0.0)
            ih = max(min(o[3], y + h) - max(o[1], y), 0.0)
            union = w * h + (o[2] - o[0]) * (o[3] - o[1]) - iw * ih
            iou = iw * ih / union if union > 0 else 0.0
            if iou > best:
                best, jmax = iou, j
        t = f = 0
        if best > 0.5:
            o = recs[d["image_id"]][jmax]
            if not o[4]:
                t, f = (0, 1) if o[5] else (1, 0)
                o[5] = True
        else:
            f = 1
        tp.append(t)
        fp.append(f)
    rec, prec, ctp, cfp = [], [], 0, 0
    for t, f in zip(tp, fp, strict=True):
        ctp, cfp = ctp + t, cfp + f
        rec.append(ctp / npos)
        prec.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
    if use_07:
        return sum(max([p for r, p in zip(rec, prec, strict=True) if r >= t], default=0.0) / 11
                   for t in np.arange(0.0, 1.1, 0.1))
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1)
               if mrec[i + 1] != mrec[i])


def _random_case(seed: int) -> tuple[list[tuple], list[dict]]:
    """3 images, 3 classes, integer GT boxes (some difficult), detections near them or anywhere,
    distinct scores (a permutation: no ties)."""
    rng = random.Random(seed)
    gt, dets = [], []
    for img in (1, 2, 3):
        for _ in range(rng.randint(0, 4)):
            x, y, w, h = rng.randint(0, 60), rng.randint(0, 60), rng.randint(2, 30), \
                rng.randint(2, 30)
            gt.append((img, rng.randint(1, 2), (x, y, w, h), rng.random() < 0.2))
    for _ in range(rng.randint(0, 25)):
        if gt and rng.random() < 0.7:
            img, cat, (x, y, w, h), _ = rng.choice(gt)
            cat = cat if rng.random() < 0.9 else 3
            box = [x + rng.uniform(-3, 3), y + rng.uniform(-3, 3), w + rng.uniform(-3, 3), h]
        else:
            img, cat = rng.randint(1, 3), rng.randint(1, 3)
            box = [rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(1, 30), rng.uniform(1, 30)]
        box[2] = max(box[2], 0.5)
        dets.append(_det(img, cat, box, 0.0))
    for det, score in zip(dets, rng.sample(range(1, 1000), len(dets)), strict=True):
        det["score"] = score / 1000
    return gt, dets


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_plain_loop_devkit_on_random_cases(seed):
    gt, dets = _random_case(seed)
    coco = _coco([1, 2, 3], gt)
    for metric, use_07 in (("voc07", True), ("voc", False)):
        per_class = evaluate_voc(coco, dets, metric=metric)[f"{metric.upper()}_per_class"]
        for cat, name in enumerate(("A", "B", "C"), start=1):
            expected = _reference_ap(gt, dets, cat, use_07)
            assert per_class[name] == (None if expected is None
                                       else pytest.approx(expected, abs=1e-12)), (seed, name)


@pytest.mark.parametrize("seed", range(4))
def test_equals_coco_ap50_when_every_detection_is_exact_and_unique(seed):
    """Precision is 1 at every recall: VOC07, VOC and COCO's 101-point AP50 (IoU >= .5) are all
    1 for each class with ground truth; a class without is None in both. (In general they
    differ: 11 or all points vs 101, > .5 vs >= .5, difficult vs crowd rules.)"""
    gt, _ = _random_case(seed)
    gt = [(img, cat, box, False) for img, cat, box, _ in gt]
    dets = [_det(img, cat, box, 1.0 - n / 100) for n, (img, cat, box, _) in enumerate(gt)]
    coco = _coco([1, 2, 3], gt)
    voc07 = evaluate_voc(coco, dets, metric="voc07")
    voc = evaluate_voc(coco, dets, metric="voc")
    with pytest.warns(UserWarning) if not dets else contextlib.nullcontext():
        ap50 = evaluate_coco(coco, dets)
    has_gt = {name: any(k == c for _, k, _, _ in gt) for c, name in enumerate("ABC", start=1)}
    for name, present in has_gt.items():
        # the devkit sums 11 terms p / 11: 1 up to the last bit
        assert voc07["VOC07_per_class"][name] == (pytest.approx(1.0, abs=1e-12) if present
                                                  else None)
        assert voc["VOC_per_class"][name] == (1.0 if present else None)
        assert (ap50["pr_iou50"]["precision"][name] is None) == (not present)
    expected = 1.0 if any(has_gt.values()) else None
    assert voc["VOC"] == ap50["AP50"] == expected
    assert voc07["VOC07"] == (None if expected is None else pytest.approx(1.0, abs=1e-12))


# ---------------------------------------------------------------------------- results files
def _write(tmp_path, payload, *, raw: str | None = None):
    path = tmp_path / "results.json"
    path.write_text(raw if raw is not None else json.dumps(payload))
    return path


def test_a_results_file_reads_back_as_entries(tmp_path):
    path = _write(tmp_path, [{**HAND_DETS[0], "extra": 1}, HAND_DETS[1]])
    assert read_results_file(path, _coco([1, 2], HAND_GT)) == HAND_DETS[:2]


GOOD = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}


@pytest.mark.parametrize(("payload", "raw", "message"), [
    ([{**GOOD, "image_id": 999}], None, r"entry 0: image_id 999 is not an image of the ground"),
    ([GOOD, {**GOOD, "category_id": 7}], None, r"entry 1: category_id 7 is not a category"),
    ([{**GOOD, "image_id": True}], None, r"image_id must be an integer, got True"),
    ([{**GOOD, "image_id": "1"}], None, r"image_id must be an integer"),
    ([{**GOOD, "bbox": [0, 0, -1, 5]}], None, r"bbox must be \[x, y, w, h\]"),
    ([{**GOOD, "bbox": [0, 0, 5]}], None, r"bbox must be"),
    ([{**GOOD, "bbox": None}], None, r"bbox must be"),
    ([{k: v for k, v in GOOD.items() if k != "score"}], None, r"score must be a finite number"),
    (None, '[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]',
     r"score must be a finite number"),
    (None, '[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1e999, 1], "score": 1}]',
     r"bbox must be"),
    ({"annotations": []}, None, r"must hold a JSON list .* not a dict"),
    ([[1, 2]], None, r"entry 0 is a list, not an object"),
    (None, "[{", r"is not valid JSON"),
    (None, "[" + "9" * 5000 + "]", r"is not valid JSON"),
])
def test_a_bad_results_file_is_one_user_error(tmp_path, payload, raw, message):
    path = _write(tmp_path, payload, raw=raw)
    with pytest.raises(ResultsFileError, match=message) as info:
        read_results_file(path, _coco([1, 2], HAND_GT))
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_a_missing_results_file(tmp_path):
    with pytest.raises(ResultsFileError, match=r"results file .*nope.json does not exist"):
        read_results_file(tmp_path / "nope.json", _coco([1], HAND_GT[:1]))
