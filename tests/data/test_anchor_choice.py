"""choose_anchors / configured_coverage: fit what is "auto", keep the rest, coverage before/after."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from detector.data.anchor_choice import choose_anchors, configured_coverage, is_auto
from detector.data.dataset import ImageRecord
from detector.errors import OptionError

GRID = dict(min_size=128, max_size=128, stride=16, offset=0.5)


def _dataset(boxes_per_image: list[list[list[float]]], size: int = 128):
    records = [ImageRecord(i, Path(f"/nonexistent/{i}.png"), size, size,
                           np.asarray(b, np.float32).reshape(-1, 4), np.ones(len(b), np.int64))
               for i, b in enumerate(boxes_per_image)]
    return SimpleNamespace(records=records, class_names=["thing"])


def _anchor_box(cx: float, cy: float, size: float, ratio: float) -> list[float]:
    w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _shapes_dataset(seed: int, sizes=(40.0, 70.0), ratios=(0.5, 2.0), images=40):
    """Boxes of a known 2 x 2 grid of shapes (jittered 5 %) at random places."""
    rng = np.random.default_rng(seed)
    per_image = []
    for _ in range(images):
        boxes = []
        for _ in range(3):
            size = sizes[rng.integers(len(sizes))] * math.exp(rng.normal(0, 0.05))
            ratio = ratios[rng.integers(len(ratios))] * math.exp(rng.normal(0, 0.05))
            w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
            x, y = rng.uniform(0, 128 - w), rng.uniform(0, 128 - h)
            boxes.append([x, y, x + w, y + h])
        per_image.append(boxes)
    return _dataset(per_image)


def test_is_auto():
    assert is_auto("auto") and is_auto(" AUTO ")
    assert not is_auto([16, 32]) and not is_auto("32") and not is_auto(None)


def test_configured_coverage_by_hand():
    # two boxes exactly on anchors at grid centres (IoU 1); one 32 x 32 box half-way between
    # grid centres: 576 / 1472 = 0.39 with the 32 x 32 anchor
    ds = _dataset([[_anchor_box(24, 40, 32, 1.0), _anchor_box(72, 56, 16, 1.0)],
                   [[0, 0, 32, 32]], []])
    coverage, boxes = configured_coverage(ds, sizes=[16, 32], ratios=[1.0], **GRID)
    assert boxes == 3 and coverage == {0.5: pytest.approx(2 / 3), 0.7: pytest.approx(2 / 3)}


@pytest.mark.parametrize("seed", [0, 1])
def test_fits_what_is_auto_and_keeps_the_rest(seed):
    ds = _shapes_dataset(seed)
    bad_sizes, bad_ratios = [10.0, 200.0], [1.0, 1.2]
    both = choose_anchors(ds, sizes="auto", ratios="auto", baseline_sizes=bad_sizes,
                          baseline_ratios=bad_ratios, seed=seed, **GRID)
    assert both.fitted == ("sizes", "ratios") and both.num_boxes == 120
    assert (both.baseline_sizes, both.baseline_ratios) == (bad_sizes, bad_ratios)
    assert len(both.sizes) == 2 and len(both.ratios) == 2
    assert both.after[0.5] > both.before[0.5] and both.after[0.7] >= both.before[0.7]
    assert both.ratios == pytest.approx([0.5, 2.0], rel=0.15)

    sizes_only = choose_anchors(ds, sizes="auto", ratios=[0.5, 2.0], baseline_sizes=bad_sizes,
                                baseline_ratios=[9.0], seed=seed, **GRID)
    assert sizes_only.fitted == ("sizes",) and sizes_only.ratios == [0.5, 2.0]
    assert sizes_only.baseline_ratios == [0.5, 2.0]  # the given ratios, not the baseline's
    ratios_only = choose_anchors(ds, sizes=[40, 70], ratios="auto", baseline_sizes=[1.0],
                                 baseline_ratios=[1.0, 1.1, 1.2], seed=seed, **GRID)
    assert ratios_only.fitted == ("ratios",) and ratios_only.sizes == [40.0, 70.0]
    assert len(ratios_only.ratios) == 3


def test_never_scores_below_the_baseline():
    """A baseline that is already the right grid: the fit keeps (about) its coverage."""
    ds = _shapes_dataset(3)
    choice = choose_anchors(ds, sizes="auto", ratios="auto", baseline_sizes=[40, 70],
                            baseline_ratios=[0.5, 2.0], seed=0, **GRID)
    score = sum(choice.after.values()) - sum(choice.before.values())
    assert score >= -0.02  # rounding to 0.1 px / 0.01 aside


def test_nothing_auto_measures_the_given_grid():
    ds = _shapes_dataset(4)
    choice = choose_anchors(ds, sizes=[40, 70], ratios=[0.5, 2.0], baseline_sizes=[1.0],
                            baseline_ratios=[1.0], seed=0, **GRID)
    assert choice.fitted == () and choice.before == choice.after
    assert (choice.sizes, choice.ratios) == ([40.0, 70.0], [0.5, 2.0])


def test_too_few_boxes_names_the_option():
    ds = _dataset([[[0, 0, 10, 10], [5, 5, 30, 20]], []])
    with pytest.raises(OptionError, match="sizes=auto: .*at least 9 boxes") as error:
        choose_anchors(ds, sizes="auto", ratios=[0.5, 1.0, 2.0], baseline_sizes=[8, 16, 32],
                       baseline_ratios=[1.0], seed=0, **GRID)
    assert error.value.option == "sizes"
    with pytest.raises(OptionError) as error:
        choose_anchors(ds, sizes=[8.0], ratios="auto", baseline_sizes=[8],
                       baseline_ratios=[0.5, 1.0, 2.0], seed=0, **GRID)
    assert error.value.option == "ratios"
