"""Drawing touches exactly the box outline; curve plots read metrics.jsonl and write real PNGs."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detector.visualize import CAPTION_AREA, GT_COLOR, class_color, draw_detections, save_image

NAMES = ["cat", "dog"]
GREY = 128


def grey(h: int = 200, w: int = 200) -> np.ndarray:
    return np.full((h, w, 3), GREY, dtype=np.uint8)


# --- drawing ---------------------------------------------------------------------------------


def test_outline_is_drawn_on_the_box_edges_and_nowhere_inside():
    image = grey()
    # box covers pixel columns 20..179 and rows 30..169; 1 px lines at a 200 px image
    out = draw_detections(image, np.array([[20.0, 30.0, 180.0, 170.0]]), np.array([2]),
                          np.array([0.93]), class_names=NAMES)
    dog = class_color(2)
    for y, x in [(30, 100), (169, 100), (100, 20), (100, 179)]:  # top, bottom, left, right
        assert tuple(out[y, x]) == dog, (y, x)
    for y, x in [(100, 100), (100, 23), (33, 100), (166, 100), (100, 176), (100, 5), (190, 100)]:
        assert tuple(out[y, x]) == (GREY,) * 3, (y, x)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == GREY).all()  # the input is left alone


def test_caption_sits_above_the_box():
    out = draw_detections(grey(), np.array([[20.0, 60.0, 180.0, 170.0]]), np.array([1]),
                          np.array([0.5]), class_names=NAMES)
    assert (out[50:59, 20:40] != GREY).any()  # the "cat 0.50" tag
    assert (out[0:40] == GREY).all()  # but nothing far above it


def test_min_score_hides_weak_boxes_and_tensors_are_accepted():
    boxes = torch.tensor([[20.0, 30.0, 180.0, 170.0], [50.0, 50.0, 60.0, 60.0]])
    out = draw_detections(grey(), boxes, torch.tensor([1, 2]), torch.tensor([0.9, 0.1]),
                          class_names=NAMES, min_score=0.5)
    assert tuple(out[30, 100]) == class_color(1)
    assert (out[50:60, 50:60] == GREY).all()


def test_no_boxes_leave_the_image_unchanged():
    image = grey()
    out = draw_detections(image, np.zeros((0, 4)), np.zeros((0,), dtype=np.int64), np.zeros((0,)),
                          class_names=NAMES, gt_boxes=np.zeros((0, 4)))
    assert np.array_equal(out, image)
    assert np.array_equal(draw_detections(image, [], [], class_names=NAMES), image)


def test_gt_boxes_are_dashed():
    out = draw_detections(grey(), np.zeros((0, 4)), [], class_names=NAMES,
                          gt_boxes=np.array([[20.0, 30.0, 180.0, 170.0]]))
    top = out[30, 20:180]
    on = (top == GT_COLOR).all(axis=1)
    assert on[:6].all() and not on[6:12].any() and on[12:18].all()  # 6 px dash, 6 px gap
    assert (out[100, 21:179] == GREY).all()


def test_bad_image_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(np.zeros((10, 10, 3), np.float32), [], [], class_names=NAMES)


def test_save_image_round_trips_rgb(tmp_path):
    image = grey(20, 30)
    image[5, 7] = (255, 0, 0)  # pure red in RGB
    path = save_image(tmp_path / "sub" / "x.png", image)
    back = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert np.array_equal(cv2.cvtColor(back, cv2.COLOR_BGR2RGB), image)


def test_captions_do_not_bury_a_small_image():
    """128 px, 40 detections above a 0.1 threshold (an untrained or low-threshold run): the
    caption tags cover at most CAPTION_AREA of the pixels, and the best detection keeps its."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 96, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(12, 32, (40, 2))], axis=1).clip(0, 128)
    scores = np.linspace(0.1, 0.9, 40)
    labels = rng.integers(1, 3, 40)
    kwargs = dict(class_names=["triangle", "rectangle"], min_score=0.1)
    image = grey(128, 128)
    captioned = draw_detections(image, boxes, labels, scores, **kwargs)
    bare = draw_detections(image, boxes, labels, scores, captions=False, **kwargs)
    covered = (captioned != bare).any(axis=2).mean()
    assert 0 < covered <= CAPTION_AREA, covered
    x1, y1 = np.rint(boxes[-1, :2]).astype(int)  # the 0.9 box: its tag sits on its top edge
    assert (captioned[max(0, y1 - 8):y1 + 8, x1:x1 + 20] != bare[max(0, y1 - 8):y1 + 8,
                                                                  x1:x1 + 20]).any()


def test_separate_boxes_on_a_large_image_all_keep_their_captions():
    boxes = np.array([[50.0, 100, 200, 200], [300, 100, 450, 200], [50, 400, 200, 500]])
    kwargs = dict(class_names=NAMES)
    image = grey(600, 600)
    captioned = draw_detections(image, boxes, [1, 2, 1], [0.3, 0.6, 0.9], **kwargs)
    bare = draw_detections(image, boxes, [1, 2, 1], [0.3, 0.6, 0.9], captions=False, **kwargs)
    for x1, y1, _, _ in boxes.astype(int):
        assert (captioned[y1 - 15:y1, x1:x1 + 30] != bare[y1 - 15:y1, x1:x1 + 30]).any()
