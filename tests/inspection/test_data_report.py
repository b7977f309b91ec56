"""The data inspection's numbers (detector/inspection/data_stats.py) and text (data_report.py) on
hand-made boxes: counts and imbalance, tiny boxes, size buckets, duplicates, coverage per class and
per size bucket, the advice and the markdown."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from detector.data.box_stats import BoxTable
from detector.data.report import DataReport
from detector.inspection.data_report import (
    ADVICE,
    Advice,
    advice,
    coverage_line,
    report_markdown,
    summary_lines,
)
from detector.inspection.data_stats import (
    AnchorSet,
    Coverage,
    DataInspection,
    Uncovered,
    class_counts,
    coverage_rows,
    duplicate_mask,
    images_without_boxes,
    imbalance_ratio,
    inspect_dataset,
    measure_coverage,
    resolve_anchors,
    size_buckets,
    tiny_box_mask,
    uncovered_boxes,
)


def test_class_counts_and_imbalance():
    counts = class_counts(torch.tensor([1, 1, 2, 3, 1, 3]), 4)
    assert counts.tolist() == [3, 1, 2, 0]
    assert imbalance_ratio(counts) == math.inf  # class 4 has no box
    assert imbalance_ratio(class_counts(torch.tensor([1, 1, 1, 2, 2]), 2)) == 1.5
    assert imbalance_ratio(torch.zeros(3, dtype=torch.long)) is None  # no box at all
    assert imbalance_ratio(torch.zeros(0, dtype=torch.long)) is None


def test_tiny_boxes_either_side_under_8_px():
    boxes = torch.tensor([[0, 0, 7.9, 20], [0, 0, 8, 8], [10, 10, 30, 15], [0, 0, 100, 100]])
    assert tiny_box_mask(boxes).tolist() == [True, False, True, False]


def test_size_buckets_at_coco_area_limits():
    sides = torch.tensor([31.0, 32.0, 95.0, 96.0, 200.0])  # squares: 961, 1024, 9025, 9216 px^2
    boxes = torch.stack([torch.zeros(5), torch.zeros(5), sides, sides], dim=1)
    assert size_buckets(boxes).tolist() == [0, 1, 1, 2, 2]


def test_images_without_boxes():
    assert images_without_boxes(torch.tensor([0, 0, 2]), 4) == 2
    assert images_without_boxes(torch.zeros(0, dtype=torch.long), 3) == 3


def test_duplicates_need_same_image_same_class_and_iou_over_095():
    a = [10.0, 10.0, 110.0, 110.0]
    shifted = [10.5, 10.0, 110.5, 110.0]  # IoU 99.5 / 100.5 ~ 0.990
    apart = [16.0, 10.0, 116.0, 110.0]  # IoU 94 / 106 ~ 0.887 with a (0.896 with shifted)
    boxes = torch.tensor([a, shifted, a, a, apart, a, a])
    labels = torch.tensor([1, 1, 2, 1, 1, 1, 1])
    image = torch.tensor([0, 0, 0, 1, 0, 2, 2])
    # box 1 repeats box 0; box 2 is another class; box 3 is another image; box 4 overlaps too
    # little; box 6 repeats box 5 (image 2)
    assert duplicate_mask(boxes, labels, image).tolist() == [False, True, False, False, False,
                                                             False, True]


def test_three_copies_are_two_duplicates_and_order_does_not_matter():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.cat([box, torch.tensor([[50.0, 50.0, 60.0, 60.0]]), box, box])
    labels, image = torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    assert duplicate_mask(boxes, labels, image).tolist() == [False, False, True, True]
    assert duplicate_mask(torch.zeros(0, 4), labels[:0], image[:0]).tolist() == []


def _reference_duplicates(boxes, labels, image, threshold=0.95):
    """Every pair, one by one: box j is a duplicate when an earlier box i matches it."""
    from torchvision.ops import box_iou

    iou = box_iou(boxes, boxes)
    out = [False] * len(boxes)
    for i, j in itertools.combinations(range(len(boxes)), 2):
        if labels[i] == labels[j] and image[i] == image[j] and iou[i, j] > threshold:
            out[j] = True
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicates_match_a_pairwise_reference(seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(40, 2, generator=g) * 100
    boxes = torch.cat([base, base + 5 + torch.rand(40, 2, generator=g) * 40], dim=1)
    picks = torch.randint(0, 40, (30,), generator=g)  # copies, some nudged a little
    copies = boxes[picks] + torch.rand(30, 4, generator=g) * 0.6
    boxes = torch.cat([boxes, copies])
    labels = torch.randint(1, 3, (70,), generator=g)
    labels[40:] = labels[picks]
    image = torch.randint(0, 3, (70,), generator=g)
    image[40:] = image[picks]
    expected = _reference_duplicates(boxes, labels, image)
    assert any(expected)  # the case is not trivial
    assert duplicate_mask(boxes, labels, image).tolist() == expected


def _squares(sides):
    s = torch.tensor(sides, dtype=torch.float32)
    return torch.stack([torch.zeros_like(s), torch.zeros_like(s), s, s], dim=1)


def test_coverage_rows_per_class_and_bucket_by_hand():
    iou = torch.tensor([0.9, 0.6, 0.4, 0.75, 0.5, 0.69])
    labels = torch.tensor([1, 1, 2, 2, 1, 2])
    boxes = _squares([10, 50, 100, 20, 40, 120])  # small, medium, large, small, medium, large
    overall, per_class, per_bucket = coverage_rows(iou, labels, boxes, ["cat", "dog", "owl"])
    assert overall == {0.5: pytest.approx(5 / 6), 0.7: pytest.approx(2 / 6)}
    assert per_class[0] == ("cat", 3, {0.5: 1.0, 0.7: pytest.approx(1 / 3)})  # .9 .6 .5
    assert per_class[1] == ("dog", 3, {0.5: pytest.approx(2 / 3), 0.7: pytest.approx(1 / 3)})  # .4 .75 .69
    assert per_class[2] == ("owl", 0, {0.5: None, 0.7: None})  # no boxes: n/a, never NaN
    assert per_bucket == [("small", 2, {0.5: 1.0, 0.7: 1.0}),  # .9 .75
                          ("medium", 2, {0.5: 1.0, 0.7: 0.0}),  # .6 .5
                          ("large", 2, {0.5: 0.5, 0.7: 0.0})]  # .4 .69


def _Table(boxes, labels, image_index, image_sizes):  # noqa: N802
    return BoxTable(boxes=torch.tensor(boxes), labels=torch.tensor(labels),
                    image_index=torch.tensor(image_index), image_sizes=torch.tensor(image_sizes))


def test_measure_coverage_on_the_real_grid():
    """Stride 16, offset 0.5 (centres 8, 24, ...), one 16 x 16 anchor: a box on a cell is covered
    with IoU 1; a 16 x 32 box gets half of it at best (IoU 0.5); a 4 x 4 box 1/16."""
    table = _Table([[0.0, 0.0, 16.0, 16.0], [16.0, 16.0, 32.0, 48.0], [6.0, 6.0, 10.0, 10.0]],
                   [1, 2, 2], [0, 0, 0], [[64, 64]])
    anchors = AnchorSet(sizes=(16.0,), ratios=(1.0,), stride=16, offset=0.5)
    coverage = measure_coverage(table, anchors, ["a", "b"])
    assert coverage.best_iou.tolist() == pytest.approx([1.0, 0.5, 1 / 16])
    assert coverage.overall == {0.5: pytest.approx(2 / 3), 0.7: pytest.approx(1 / 3)}
    assert coverage.per_class[1] == ("b", 2, {0.5: 0.5, 0.7: 0.0})


def _inspection(*, coverage_05: float, counts: list[int], names=("cat", "dog")):
    names = names[:len(counts)]
    anchors = AnchorSet(sizes=(32.0, 64.0), ratios=(0.5, 1.0, 2.0), stride=16, offset=0.5)
    overall = {0.5: coverage_05, 0.7: coverage_05 / 2}
    coverage = Coverage(anchors=anchors, best_iou=torch.zeros(0), overall=overall,
                        per_class=[(n, c, overall) for n, c in zip(names, counts, strict=True)],
                        per_bucket=[("small", 0, {0.5: None, 0.7: None})])
    return DataInspection(name="toy", split="train", class_names=list(names), num_images=5,
                          image_size_range=(64, 96), counts=counts,
                          imbalance=imbalance_ratio(torch.tensor(counts)), empty_images=1,
                          tiny=2, duplicates=1, problems={"clipped_box": 3},
                          problems_text=DataReport(name="toy").summary(), coverage=coverage)


def test_summary_prints_the_coverage_lines_exactly():
    lines = summary_lines(_inspection(coverage_05=0.9876, counts=[10, 10]))
    assert "anchor coverage (IoU >= 0.5): 98.8 %" in lines
    assert "anchor coverage (IoU >= 0.7): 49.4 %" in lines
    assert coverage_line(0.5, None) == "anchor coverage (IoU >= 0.5): n/a %"
    assert not any(line.startswith("advice") for line in lines)  # 98.8 % and 1:1: nothing to say


def test_advice_for_low_coverage_and_imbalance_one_sentence_each():
    """Low coverage: the size (and, outside the grid's ratios, the aspect) of the boxes no anchor
    reaches, to add to the hand-set grid; small ones also get the stride hint. 1:6 imbalance:
    compare the losses. One sentence each."""
    small = Uncovered(count=7, size_median=12.0, size_p10=8.0, size_p90=20.0, ratio_median=3.0,
                      shape_fits=0.2)
    low = dataclasses.replace(_inspection(coverage_05=0.80, counts=[60, 10]), uncovered=small)
    said = advice(low)
    assert len(said) == 2
    assert "the 7 boxes no anchor reaches are about 12 px" in said[0]
    assert "add a size near 12 to dataset.anchor_sizes (now [32, 64])" in said[0]
    assert "a ratio near 3.00 to dataset.anchor_ratios (now [0.5, 1, 2])" in said[0]
    assert "auto" not in said[0]  # no fitted alternative measured here
    assert "loss=ce, focal, ohem" in said[1] and " 6 times" in said[1]
    assert all(text.count(". ") == 0 and text.endswith(".") for text in said)  # one sentence
    large = Uncovered(count=3, size_median=150.0, size_p10=120.0, size_p90=200.0,
                      ratio_median=1.1, shape_fits=0.0)
    text = advice(dataclasses.replace(low, uncovered=large))[0]
    assert "add a size near 150" in text and "ratio near" not in text and "stride" not in text
    between = dataclasses.replace(large, shape_fits=0.9)  # shapes fit, centres too far
    text = advice(dataclasses.replace(low, uncovered=between))[0]
    assert "90.0 % of them match an anchor shape but lie between the anchor centres" in text
    assert "model.backbone.output_stride=8" in text and "add a size" not in text
    assert advice(dataclasses.replace(_inspection(coverage_05=0.80, counts=[50, 10]),
                                      uncovered=small)) == said[:1]  # 1:5 is fine
    assert advice(low, Advice(coverage_below=0.5, imbalance_above=10)) == []
    assert ADVICE.coverage_below == 0.95 and ADVICE.imbalance_above == 5.0


def test_uncovered_boxes_are_summarised_by_size_and_aspect():
    """Boxes under IoU 0.5: count, sqrt(area) median and 10/90 % quantiles, median h/w."""
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 20, 80], [0, 0, 30, 30], [0, 0, 5, 5.0]])
    anchors = AnchorSet(sizes=(10.0,), ratios=(1.0,), stride=16, offset=0.5)
    found = uncovered_boxes(boxes, torch.tensor([0.2, 0.4, 0.9, 0.1]), anchors)
    assert found.count == 3 and found.size_median == pytest.approx(10.0)
    # sizes 5, 10, 40 (sqrt of 20 x 80), quantiles interpolated linearly
    assert found.size_p10 == pytest.approx(6.0) and found.size_p90 == pytest.approx(34.0)
    assert found.ratio_median == pytest.approx(1.0)
    # centred on a 10 x 10 anchor: 10 x 10 fits (IoU 1), 20 x 80 (100 / 1600) and 5 x 5
    # (25 / 100) do not
    assert found.shape_fits == pytest.approx(1 / 3)
    assert uncovered_boxes(boxes, torch.ones(4), anchors) is None


def test_markdown_escapes_names_and_holds_the_tables():
    text = report_markdown(_inspection(coverage_05=0.5, counts=[3, 1],
                                       names=("a|b*c", "x\ny")), ["boxes.png"])
    assert "| a\\|b\\*c | 3 |" in text
    assert "x\\ny" in text and "x\ny" not in text  # a line break in a name stays in its cell
    assert "- anchor coverage (IoU >= 0.5): 50.0 %" in text
    assert "| boxes partly outside the image (clipped) | 3 |" in text
    assert "| class | boxes | IoU >= 0.5 (%) | IoU >= 0.7 (%) |" in text
    assert "![boxes.png](boxes.png)" in text


class _Dataset:
    """What inspect_dataset reads of a DetectionDataset: records, class names, the report."""

    def __init__(self, records, class_names, report):
        self.records, self.class_names, self.report = records, class_names, report

    def __len__(self):
        return len(self.records)


def _record(index, height, width, boxes, labels):
    from pathlib import Path

    from detector.data.dataset import ImageRecord

    return ImageRecord(index, Path(f"{index}.jpg"), height, width,
                       np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                       np.asarray(labels, dtype=np.int64))


def test_inspect_dataset_measures_at_model_input_scale():
    """Images of 200 x 100 resized to min_size 50 (scale 0.5): a 20 x 12 box becomes 10 x 6
    (tiny); duplicates and an empty image are counted; the report's counters come along."""
    report = DataReport(name="toy")
    report.count("clipped_box", 2)
    report.count("empty_image_filtered", 1)
    records = [_record(1, 100, 200, [[0, 0, 20, 12], [0, 0, 64, 64], [0, 0, 64, 64]], [1, 1, 1]),
               _record(2, 100, 200, [[100, 20, 164, 84]], [2]),
               _record(3, 100, 200, [], [])]
    inspection, table = inspect_dataset(
        _Dataset(records, ["cat", "dog", "owl"], report), name="toy", split="train",
        min_size=50, max_size=1000, sizes=[32.0], ratios=[1.0], stride=16, offset=0.5)
    assert table.boxes[0].tolist() == pytest.approx([0, 0, 10, 6])
    assert inspection.counts == [3, 1, 0] and inspection.imbalance == math.inf
    assert (inspection.tiny, inspection.duplicates) == (1, 1)
    assert inspection.empty_images == 2  # one kept without boxes + one the loader filtered
    assert inspection.problems == {"clipped_box": 2, "empty_image_filtered": 1}
    assert inspection.num_images == 3 and inspection.image_size_range == (50, 100)
    assert inspection.coverage.anchors.source == "config"
    assert inspection.rpn.images == 3 and inspection.rpn.positives >= 1 / 3  # each box's best
    assert any(line.startswith("RPN positive anchors per image: ") for line in
               summary_lines(inspection))


def test_auto_anchors_are_fitted_and_said_so():
    """Squares of 10, 20 and 40 px (three each) centred on an anchor centre (24, 24) with the
    ratio held at 1: three sizes fitted to them; the sizes given as numbers stay as given."""
    sides = [10.0] * 3 + [20.0] * 3 + [40.0] * 3
    table = _Table([[24 - s / 2, 24 - s / 2, 24 + s / 2, 24 + s / 2] for s in sides], [1] * 9,
                   [0] * 9, [[64, 64]])
    auto = resolve_anchors(table, sizes="auto", ratios=[1.0], stride=16, offset=0.5, seed=0,
                           baseline_sizes=[16.0, 32.0, 64.0])
    assert auto.sizes == pytest.approx((10.0, 20.0, 40.0), rel=0.02) and auto.ratios == (1.0,)
    assert auto.source.startswith("auto")
    given = resolve_anchors(table, sizes=[16, 32], ratios=[0.5, 2], stride=8, offset=0.0, seed=0)
    assert given == AnchorSet(sizes=(16.0, 32.0), ratios=(0.5, 2.0), stride=8, offset=0.0)
    inspection = dataclasses.replace(_inspection(coverage_05=1.0, counts=[9]),
                                     class_names=["a"], coverage=measure_coverage(table, auto, ["a"]))
    assert any(line.startswith("anchors (auto: fitted to these boxes): sizes [10")
               for line in summary_lines(inspection))


def test_a_split_without_boxes_reports_n_a_never_nan(tmp_path):
    from detector.inspection.data_plots import plot_boxes

    records = [_record(1, 100, 200, [], []), _record(2, 50, 50, [], [])]
    inspection, table = inspect_dataset(
        _Dataset(records, ["cat"], DataReport(name="toy")), name="toy", split="val",
        min_size=50, max_size=1000, sizes=[32.0], ratios=[1.0], stride=16, offset=0.5)
    assert inspection.counts == [0] and inspection.imbalance is None
    assert inspection.empty_images == 2 and inspection.fitted is None
    lines = summary_lines(inspection)
    assert "anchor coverage (IoU >= 0.5): n/a %" in lines and not any("nan" in x for x in lines)
    assert advice(inspection) == []
    plot_boxes(tmp_path / "boxes.png", boxes=table.boxes, labels=table.labels,
               class_names=["cat"], anchors=inspection.coverage.anchors)
    assert (tmp_path / "boxes.png").stat().st_size > 0


def test_advice_names_fitted_anchors_only_when_they_cover_more_and_says_what_they_cost():
    low = _inspection(coverage_05=0.60, counts=[10, 10])
    fitted = dataclasses.replace(low.coverage, overall={0.5: 0.55, 0.7: 0.2})
    said = advice(dataclasses.replace(low, fitted=fitted))
    assert len(said) == 1 and "auto" not in said[0]
    better = dataclasses.replace(low.coverage, overall={0.5: 0.75, 0.7: 0.3})
    text = advice(dataclasses.replace(low, fitted=better))[0]
    assert "dataset.anchor_sizes=auto" in text and "cover 75.0 %" in text
    assert "lowered AP50" in text and text.count(". ") == 0
