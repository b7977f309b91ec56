"""Transform pipelines: resize rule, box bookkeeping, flips, label alignment, real-pixel checks."""

import albumentations as A
import numpy as np
import pytest
import torch

from detector.data.coco import CocoDetection
from detector.data.image_io import read_image_rgb
from detector.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionTransforms,
    boxes_to_original,
    build_transforms,
    resize_scale,
)
from detector.data.voc import VocDetection


def _unnormalise(image: torch.Tensor) -> np.ndarray:
    """FloatTensor[3, h, w] normalised -> float[h, w, 3] in 0..255."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image * std + mean) * 255).permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    ("hw", "expected"),
    [((417, 650), 600 / 417), ((100, 300), 1000 / 300), ((1000, 600), 1.0), ((50, 50), 12.0)],
)
def test_resize_scale_hand_computed(hw, expected):
    assert resize_scale(*hw, min_size=600, max_size=1000) == pytest.approx(expected)


def test_eval_resize_shape_and_scale():
    out = build_transforms(train=False)(image=np.zeros((417, 650, 3), np.uint8),
                                        boxes=np.zeros((0, 4)), labels=np.zeros(0))
    assert out["image"].shape == (3, 600, 935)  # round(650 * 600 / 417) = 935
    assert out["scale"] == (600 / 417, 935 / 650)
    assert out["boxes"].shape == (0, 4) and out["labels"].dtype == torch.long


@pytest.mark.parametrize("hw", [(417, 650), (37, 1201), (999, 31), (600, 1000), (64, 64)])
def test_boxes_round_trip_to_original_within_one_pixel(hw):
    rng = np.random.default_rng(hw[0])
    h, w = hw
    xy = rng.uniform(0, [w, h], size=(20, 2))
    wh = rng.uniform(1, [w, h], size=(20, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1)
    out = build_transforms(train=False)(image=np.zeros((h, w, 3), np.uint8), boxes=boxes,
                                        labels=np.arange(1, 21))
    back = boxes_to_original(out["boxes"], torch.tensor(out["scale"]))
    assert torch.all((back - torch.from_numpy(boxes).float()).abs() <= 1.0)
    assert out["labels"].tolist() == list(range(1, 21))


def test_boxes_to_original_batched_hand_computed():
    boxes = torch.tensor([[[10.0, 20, 30, 40]], [[10.0, 20, 30, 40]]])
    scales = torch.tensor([[2.0, 4.0], [0.5, 0.5]])  # (sy, sx)
    torch.testing.assert_close(boxes_to_original(boxes, scales),
                               torch.tensor([[[2.5, 10, 7.5, 20]], [[20.0, 40, 60, 80]]]))


def test_flip_moves_box_and_pixels_together():
    image = np.full((40, 60, 3), 30, np.uint8)
    image[5:15, 4:24] = (250, 10, 10)  # red patch = box (4, 5, 24, 15)
    t = build_transforms(train=True, min_size=80, max_size=200, hflip_prob=1.0)
    out = t(image=image, boxes=np.array([[4.0, 5, 24, 15]]), labels=np.array([3]))
    expected = torch.tensor([[(60 - 24) * 2.0, 10, (60 - 4) * 2, 30]])  # mirrored, then x2
    torch.testing.assert_close(out["boxes"], expected)
    x1, y1, x2, y2 = out["boxes"][0].int().tolist()
    inside = _unnormalise(out["image"])[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].reshape(-1, 3).mean(0)
    np.testing.assert_allclose(inside, [250, 10, 10], atol=1.0)


def test_labels_stay_aligned_when_boxes_are_dropped():
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.4)
    crop = DetectionTransforms(compose=A.Compose(
        [A.Crop(x_min=0, y_min=0, x_max=50, y_max=50)], bbox_params=bbox_params))
    boxes = np.array([[0.0, 0, 10, 10], [60, 60, 80, 80], [40, 40, 70, 70], [45, 0, 55, 10]])
    out = crop(image=np.zeros((100, 100, 3), np.uint8), boxes=boxes, labels=np.array([1, 2, 3, 4]))
    assert out["labels"].tolist() == [1, 4]  # box 2 outside, box 3 keeps 1/9 of its area
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 0, 10, 10], [45, 0, 50, 10]]))


def test_box_safe_crop_and_jitter_keep_every_box():
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[30.0, 40, 60, 90], [100, 10, 150, 50]])
    t = build_transforms(train=True, min_size=120, max_size=400, crop_prob=1.0, color_jitter=0.4,
                         seed=3)
    for _ in range(10):
        out = t(image=image, boxes=boxes, labels=np.array([1, 2]))
        assert out["labels"].tolist() == [1, 2]
        h, w = out["image"].shape[1:]
        assert min(h, w) == 120
        assert torch.all(out["boxes"] >= 0) and torch.all(out["boxes"][:, 2] <= w)
        assert torch.all(out["boxes"][:, 3] <= h)


def test_same_seed_same_augmentations():
    image = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)

    def run(seed):
        t = build_transforms(train=True, min_size=50, hflip_prob=0.5, color_jitter=0.3, seed=seed)
        return [t(image=image, boxes=np.array([[1.0, 2, 30, 40]]), labels=np.array([1]))["image"]
                for _ in range(6)]

    first, again = run(5), run(5)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, run(6), strict=True))


# ---- real data: boxes land on the right pixels after resize + flip -------------------------


def _box_mean(image: np.ndarray, box) -> np.ndarray:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return image[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)


def _mean_colour_errors(dataset, indices, min_side):
    """Per box: |mean colour inside the transformed box - inside the original box| (max over
    channels), and the same for the box mirrored back (where it would be without the flip)."""
    good, unflipped = [], []
    for i in indices:
        record = dataset.records[i]
        original = read_image_rgb(record.path).astype(np.float64)
        sample = dataset[i]
        image = _unnormalise(sample["image"])
        width = image.shape[1]
        for before, after in zip(record.boxes, sample["boxes"].tolist(), strict=True):
            if min(before[2] - before[0], before[3] - before[1]) < min_side:
                continue
            reference = _box_mean(original, before)
            mirrored = (width - after[2], after[1], width - after[0], after[3])
            good.append(np.abs(_box_mean(image, after) - reference).max())
            unflipped.append(np.abs(_box_mean(image, mirrored) - reference).max())
    return np.array(good), np.array(unflipped)


def test_raccoon_boxes_follow_resize_and_flip(raccoon_root):
    t = build_transforms(train=True, min_size=300, max_size=500, hflip_prob=1.0)
    ds = VocDetection(root=raccoon_root, split_file="data/test_labels.csv", transforms=t)
    good, unflipped = _mean_colour_errors(ds, range(0, 40, 4), min_side=20)
    assert len(good) >= 10
    assert good.max() < 3.0  # the same pixels, up to resampling
    assert unflipped.max() > 3.0  # the check can fail: a missed flip is caught


def test_coco_boxes_follow_resize_and_flip(coco_tiny_root):
    t = build_transforms(train=True, min_size=600, max_size=1000, hflip_prob=1.0)
    ds = CocoDetection(root=coco_tiny_root, split="val2017", transforms=t)
    good, unflipped = _mean_colour_errors(ds, range(0, 80, 10), min_side=40)
    assert len(good) >= 10
    assert good.max() < 3.0
    assert unflipped.max() > 3.0
