"""The shapes generator's long_side_range and class_sizes, and the small-rare set they make
(experiment=ce_small_rare / focal_small_rare): the sets made without them unchanged, the new
parameters doing what they say, their ranges, the manifest, a checkpoint of such a set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.run_tool import run_tool
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from detector.data.report import DatasetError
from detector.data.shapes import (
    CLASS_NAMES,
    ShapesDetection,
    generate_shapes_dataset,
    render_shapes_image,
    require_shapes_dataset,
)
from detector.data.transforms import resize_scale

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STAR = CLASS_NAMES.index("star")
SMALL_STAR = [None, None, None, [6, 24]]
TINY = {"num_train": 3, "num_val": 2, "image_size": 64}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _annotations(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


# ---------------------------------------------------------------------------- sets made before
# sha256 of annotations/instances_{train,val}.json of a 12 + 4 image, 64 px, seed 0 set, written
# by the generator before long_side_range and class_sizes existed (GENERATOR_VERSION 2).
BEFORE = {
    None: ("3416d2b33c3412da9aa46b4a9f90a9a31144982f4b757a18a622ca1da0a26ea7",
           "13b113cce8d6a1ef824f2dc2c8bcc757a7f75b755ed59691a643a6c7b86b759d"),
    (1, 1, 1, 0.1): ("a4f28b44236459b161565709b55f0ccd34c0921743020d74b6eab63d4a6ccde9",
                     "13b113cce8d6a1ef824f2dc2c8bcc757a7f75b755ed59691a643a6c7b86b759d"),
}


@pytest.mark.parametrize("ratios", list(BEFORE), ids=["default", "imbalanced"])
def test_the_default_and_imbalanced_sets_are_what_they_were(ratios, tmp_path):
    """A regression value, not a seed-tuned one: generation is deterministic by design (image i
    of a split depends only on (seed, split, i), through numpy's PCG64 stream), and these hashes
    are what the code before the new parameters wrote. The annotations depend only on that
    stream, the PNG bytes also on the encoder, so the annotations are hashed. A change here
    changes every existing default set: bump GENERATOR_VERSION and update the values on purpose.
    """
    class_ratios = None if ratios is None else list(ratios)
    root = generate_shapes_dataset(root=tmp_path / "s", num_train=12, num_val=4, image_size=64,
                                   seed=0, class_ratios=class_ratios)
    assert (_digest(root / "annotations" / "instances_train.json"),
            _digest(root / "annotations" / "instances_val.json")) == BEFORE[ratios]
    manifest = json.loads((root / "manifest.json").read_text())
    assert not {"long_side_range", "class_sizes"} & manifest.keys()
    # the new parameters left at "nothing to change" are the same set, byte for byte
    same = generate_shapes_dataset(root=tmp_path / "n", num_train=12, num_val=4, image_size=64,
                                   seed=0, class_ratios=class_ratios, long_side_range=None,
                                   class_sizes=[None] * len(CLASS_NAMES))
    assert _contents(same) == _contents(root)


# ---------------------------------------------------------------------------- what they do
def _renders(count: int, **params) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [render_shapes_image(np.random.default_rng([7, i]), **params) for i in range(count)]


def test_class_sizes_bound_a_shapes_box_and_long_side_range_the_image():
    renders = _renders(300, image_size=128, long_side_range=[128, 320], class_sizes=SMALL_STAR)
    sides = np.array([image.shape[:2] for image, _, _ in renders])  # (h, w)
    assert (sides.min(axis=1) == 128).all()
    assert (sides.max(axis=1) >= 128).all() and (sides.max(axis=1) <= 320).all()
    assert (sides[:, 0] > sides[:, 1]).any() and (sides[:, 1] > sides[:, 0]).any()  # both ways
    boxes = np.concatenate([b for _, b, _ in renders])
    labels = np.concatenate([lab for _, _, lab in renders])
    hw = np.concatenate([np.repeat(s[None], len(b), axis=0) for s, (_, b, _) in
                         zip(sides, renders, strict=True)])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= hw[:, ::-1]).all()  # never clipped
    wh = boxes[:, 2:] - boxes[:, :2]
    stars = wh[labels == STAR + 1]
    assert len(stars) > 0
    # a star's box: its longer side drawn in [6, 24]; its outer points make a regular pentagon,
    # whose extents in two perpendicular directions differ by at most 1 - cos(18 deg) (5 %)
    assert (stars.max(axis=1) >= 6 - 1e-9).all() and (stars.max(axis=1) <= 24 + 1e-9).all()
    assert (stars.min(axis=1) >= np.cos(np.pi / 10) * stars.max(axis=1) - 1e-9).all()
    # the other shapes keep 1/4-5/8 of the shorter side across (their box up to that diameter)
    others = wh[labels != STAR + 1]
    assert others.max() <= 0.625 * 128 + 1e-9 and others.max(axis=1).min() >= 0.6 * 0.25 * 128


def test_a_size_given_for_one_shape_leaves_images_without_it_as_they_were():
    """Both ways of sizing a shape draw one number and then the polygon, so the random stream
    only parts where a star is drawn. (A star drawn but not placed, 30 spots overlapping others,
    shows in neither's labels; a small star almost always finds a spot: those images have one.)"""
    plain = _renders(60, image_size=96)
    sized = _renders(60, image_size=96, class_sizes=SMALL_STAR)
    without = [i for i, ((_, _, a), (_, _, b)) in enumerate(zip(plain, sized, strict=True))
               if STAR + 1 not in a and STAR + 1 not in b]
    assert 10 < len(without) < 60
    for i in without:
        for a, b in zip(plain[i], sized[i], strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def small_rare(tmp_path_factory) -> tuple[Path, dict]:
    """The set experiment=focal_small_rare describes (its config, as composed), generated."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=["experiment=focal_small_rare"])
    d = cfg.dataset
    root = generate_shapes_dataset(
        root=tmp_path_factory.mktemp("small_rare") / "s", num_train=d.num_train,
        num_val=d.num_val, image_size=d.image_size, class_ratios=d.class_ratios,
        long_side_range=d.long_side_range, class_sizes=d.class_sizes)  # ListConfigs, as Hydra
    return root, OmegaConf.to_container(d)


def _binomial_band(n: int, p: float) -> tuple[float, float]:
    """n p -/+ 4 standard deviations: a correct generator lands outside with p < 1e-4."""
    sd = np.sqrt(n * p * (1 - p))
    return n * p - 4 * sd, n * p + 4 * sd


def test_the_small_rare_set_star_frequency_sizes_and_identity_resize(small_rare):
    root, d = small_rare
    assert d["class_sizes"] == SMALL_STAR and d["class_ratios"] == [1, 1, 1, 0.1]
    for split, p in (("train", 0.1 / 3.1), ("val", 1 / 4)):  # val stays balanced
        coco = _annotations(root, split)
        labels = np.array([a["category_id"] for a in coco["annotations"]])
        low, high = _binomial_band(len(labels), p)
        assert low <= np.sum(labels == STAR + 1) <= high, split
        wh = np.array([a["bbox"][2:] for a in coco["annotations"]])
        stars = wh[labels == STAR + 1].max(axis=1)
        assert stars.min() >= 6 - 0.01 and stars.max() <= 24 + 0.01  # boxes kept to 2 decimals
        # the resize the experiment trains with leaves every image, so every box, as generated
        scales = {resize_scale(i["height"], i["width"], min_size=d["min_size"],
                               max_size=d["max_size"]) for i in coco["images"]}
        assert scales == {1.0}
    train = ShapesDetection(root=root, split="train", **{
        key: d[key] for key in ("num_train", "num_val", "image_size", "class_ratios",
                                "long_side_range", "class_sizes")})
    assert train.report.as_dict() == {}  # no box dropped or repaired, the small ones included


def test_the_two_experiments_differ_in_the_loss_alone():
    def composed(name: str) -> dict:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            cfg = OmegaConf.to_container(compose(config_name="train",
                                                 overrides=[f"experiment={name}"]))
        return {key: value for key, value in cfg.items() if key not in ("loss", "name")}

    ce, focal = composed("ce_small_rare"), composed("focal_small_rare")
    assert ce == focal
    assert ce["dataset"]["root"] == "datasets/shapes_small_rare"


# ---------------------------------------------------------------------------- ranges, manifest
@pytest.mark.parametrize(("params", "message"), [
    ({"long_side_range": [32, 96]}, "long_side_range must be null or [low, high], integers "
                                    "with image_size 64 <= low <= high <= 2048, got [32, 96]"),
    ({"long_side_range": [96, 64]}, "long_side_range must be null or [low, high]"),
    ({"long_side_range": [64, 4096]}, "long_side_range must be null or [low, high]"),
    ({"long_side_range": [64.0, 96]}, "long_side_range must be null or [low, high]"),
    ({"long_side_range": "64-96"}, "long_side_range must be null or [low, high]"),
    ({"class_sizes": [[6, 24]]}, "class_sizes must be null or 4 entries (rectangle, ellipse, "
                                 "triangle, star), each null or [low, high], integers with 4 <= "
                                 "low <= high <= image_size 64, got [[6, 24]]"),
    ({"class_sizes": [None, None, None, [2, 24]]}, "class_sizes must be null or 4 entries"),
    ({"class_sizes": [None, None, None, [6, 65]]}, "class_sizes must be null or 4 entries"),
    ({"class_sizes": [None, None, None, [24, 6]]}, "class_sizes must be null or 4 entries"),
    ({"class_sizes": [None, None, None, "6-24"]}, "class_sizes must be null or 4 entries"),
    ({"class_sizes": [None, None, None, [6.5, 24]]}, "class_sizes must be null or 4 entries"),
    ({"num_train": 50_000, "num_val": 50_000, "image_size": 128, "long_side_range": [128, 320]},
     "shapes dataset of 50000 + 50000 images of 128 x 128-320 px is too large"),
], ids=["below_image_size", "reversed", "huge", "float", "string", "length", "tiny", "past_image",
        "sizes_reversed", "size_string", "size_float", "pixels"])
def test_the_new_parameters_are_checked_before_anything_is_written(params, message, tmp_path,
                                                                   monkeypatch):
    from detector.data import shapes

    monkeypatch.setattr(shapes, "_write_split",
                        lambda *args, **kwargs: pytest.fail("generation began unchecked"))
    with pytest.raises(DatasetError) as info:
        generate_shapes_dataset(root=tmp_path / "s", **{**TINY, **params})
    assert message in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_the_manifest_records_the_new_parameters_and_a_change_regenerates(tmp_path):
    params = {**TINY, "long_side_range": [64, 96], "class_sizes": SMALL_STAR}
    root = generate_shapes_dataset(root=tmp_path / "s", **params)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["long_side_range"] == [64, 96] and manifest["class_sizes"] == SMALL_STAR
    widths = {(i["width"], i["height"]) for i in _annotations(root, "train")["images"]}
    assert all(min(size) == 64 and 64 <= max(size) <= 96 for size in widths)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert require_shapes_dataset(root=root, **params) == root  # read as described, as is
    generate_shapes_dataset(root=root, **params)
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    other = {**params, "class_sizes": [None, None, None, [8, 16]]}
    with pytest.raises(DatasetError, match=r"differs in class_sizes\)") as info:
        require_shapes_dataset(root=root, **other)
    assert "'dataset.long_side_range=[64,96]' 'dataset.class_sizes=[null,null,null,[8,16]]'" in (
        str(info.value))
    generate_shapes_dataset(root=root, **other)  # regenerated
    assert json.loads((root / "manifest.json").read_text())["class_sizes"][STAR] == [8, 16]
    square = generate_shapes_dataset(root=root, **{**other, "long_side_range": None})
    assert {(i["width"], i["height"]) for i in _annotations(square, "val")["images"]} == {
        (64, 64)}
    assert "long_side_range" not in json.loads((root / "manifest.json").read_text())


# ---------------------------------------------------------------------------- a checkpoint
@pytest.mark.slow
def test_a_checkpoint_of_a_tiny_run_on_the_small_rare_set_evaluates(tmp_path):
    """Its dataset description (the new keys included) passes the checkpoint checks and reads
    the set back."""
    run_dir = tmp_path / "run"
    tiny = ["experiment=focal_small_rare", f"dataset.root={tmp_path / 'small_rare'}",
            "dataset.num_train=6", "dataset.num_val=3", "dataset.image_size=64",
            "dataset.long_side_range=[64,96]", "dataset.min_size=64", "dataset.max_size=96",
            "batch_size=2", "num_workers=0", "train.progress=false", "train.eval_batch_size=4"]
    done = run_tool("train_net.py", [*tiny, "schedule.iterations=2", f"output_dir={run_dir}"],
                    cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    checkpoint = run_dir / "checkpoints" / "final.pth"
    done = run_tool("eval.py", [f"checkpoint={checkpoint}", "num_workers=0", "batch_size=4",
                                "num_visualize=0"], cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert "Average Precision" in output and "star" in output
