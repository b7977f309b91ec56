"""The generated shapes dataset: deterministic, idempotent, loads through the COCO code path."""

import json
import logging
import os
import time

import numpy as np
import pytest

from detector.data.coco import CocoDetection
from detector.data.image_io import read_image_rgb
from detector.data.report import DatasetError
from detector.data.shapes import (
    CLASS_NAMES,
    ShapesDetection,
    existing_shapes_dataset,
    generate_shapes_dataset,
    render_shapes_image,
)

SMALL = {"num_train": 10, "num_val": 4, "image_size": 64}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory):
    """The default-parameter set (the training config's default dataset)."""
    return generate_shapes_dataset(root=tmp_path_factory.mktemp("default") / "shapes")


def _contents(root):
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return {str(f): (root / f).read_bytes() for f in files}


def test_same_seed_identical_other_seed_different(tmp_path):
    a = generate_shapes_dataset(root=tmp_path / "a", seed=3, **SMALL)
    b = generate_shapes_dataset(root=tmp_path / "b", seed=3, **SMALL)
    c = generate_shapes_dataset(root=tmp_path / "c", seed=4, **SMALL)
    assert _contents(a) == _contents(b)
    assert _contents(a)["annotations/instances_train.json"] != _contents(c)[
        "annotations/instances_train.json"]


def test_idempotent_and_regenerates_on_new_parameters(tmp_path):
    root = generate_shapes_dataset(root=tmp_path / "s", **SMALL)
    stamp = (root / "train" / "000000.png").stat().st_mtime_ns
    generate_shapes_dataset(root=root, **SMALL)
    assert (root / "train" / "000000.png").stat().st_mtime_ns == stamp
    generate_shapes_dataset(root=root, **{**SMALL, "num_train": 5})
    assert len(list((root / "train").iterdir())) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary folder left behind


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        generate_shapes_dataset(root=tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_rendered_boxes_are_inside_the_image_and_not_tiny():
    rng = np.random.default_rng(0)
    for _ in range(60):
        image, boxes, labels = render_shapes_image(rng, image_size=96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert len(boxes) == len(labels) <= 4 and set(labels.tolist()) <= {1, 2, 3, 4}
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 96)
        sides = boxes[:, 2:] - boxes[:, :2]
        # the thinnest shape is an ellipse/rectangle of aspect 0.55 at the smallest diameter
        assert np.all(sides >= 0.25 * 96 * 0.55)
        # every shape spans at least ~60% of the smallest diameter (a quarter of the image) along
        # its longer side: two cells of a stride-16 map at 128 px
        assert np.all(sides.max(axis=1) >= 0.6 * 0.25 * 96)


def test_default_set_shape_and_coco_code_path(default_root):
    train = ShapesDetection(root=default_root, split="train")
    val = ShapesDetection(root=default_root, split="val")
    assert isinstance(train, CocoDetection)
    assert (len(train), len(val)) == (600, 150)
    assert train.class_names == list(CLASS_NAMES)
    raw = json.loads((default_root / "annotations" / "instances_train.json").read_text())
    assert sum(len(r.boxes) for r in train.records) == len(raw["annotations"])
    per_image = np.array([len(r.boxes) for r in train.records])
    assert 0.05 < np.mean(per_image == 0) < 0.2  # some negatives, ~10 %
    assert per_image.max() == 4
    labels = np.concatenate([r.labels for r in train.records])
    counts = np.bincount(labels, minlength=5)[1:]
    assert counts.min() > 0.15 * counts.sum()  # the four classes are balanced
    sides = np.concatenate([r.boxes[:, 2:] - r.boxes[:, :2] for r in train.records])
    assert sides.min() >= 16 * 0.55 and sides.max() <= 80.01  # diameters 16..80 px
    assert train.report.as_dict() == {}
    assert read_image_rgb(train.records[0].path).shape == (128, 128, 3)
    sample = val[0]
    assert sample["image"].shape == (3, 128, 128) and sample["image_id"] == val.image_ids[0]


def test_a_first_generation_is_information_a_replacement_a_warning(tmp_path, caplog):
    root = tmp_path / "mistyped" / "shapes"
    with caplog.at_level(logging.INFO, logger="detector.data.shapes"):
        generate_shapes_dataset(root=root, **SMALL)
    (record,) = [r for r in caplog.records if r.name == "detector.data.shapes"]
    assert record.levelno == logging.INFO and str(root.resolve()) in record.getMessage()
    assert "none there yet" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="detector.data.shapes"):
        generate_shapes_dataset(root=root, **SMALL)  # already there: nothing to say
        assert [r for r in caplog.records if r.name == "detector.data.shapes"] == []
        generate_shapes_dataset(root=root, **{**SMALL, "num_val": 2})
    (record,) = [r for r in caplog.records if r.name == "detector.data.shapes"]
    assert record.levelno == logging.WARNING and "other parameters" in record.getMessage()


def _train_counts(root) -> np.ndarray:
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    return np.bincount([a["category_id"] for a in coco["annotations"]], minlength=5)[1:]


def test_class_ratios_zero_leaves_classes_out_and_val_stays_balanced(tmp_path):
    root = generate_shapes_dataset(root=tmp_path / "s", class_ratios=[1, 1, 0, 0], **SMALL)
    counts = _train_counts(root)
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == counts[3] == 0
    val = json.loads((root / "annotations" / "instances_val.json").read_text())
    balanced = generate_shapes_dataset(root=tmp_path / "b", **SMALL)
    assert val == json.loads((balanced / "annotations" / "instances_val.json").read_text())
    assert json.loads((root / "manifest.json").read_text())["class_ratios"] == [1, 1, 0, 0]


def test_class_ratios_give_the_requested_frequencies_deterministically(tmp_path):
    params = {"num_train": 400, "num_val": 1, "image_size": 64, "class_ratios": [1, 1, 1, 0.1]}
    a = generate_shapes_dataset(root=tmp_path / "a", **params)
    b = generate_shapes_dataset(root=tmp_path / "b", **params)
    assert _contents(a) == _contents(b)
    counts = _train_counts(a)
    # ~1000 objects: a star is drawn with p = 0.1 / 3.1; the commonest classes agree to ~10 %
    assert counts.sum() > 800
    common = counts[:3]
    assert common.min() > 0.8 * common.max()
    assert 0.05 < counts[3] / common.mean() < 0.17


def test_equal_ratios_are_the_balanced_set_and_bad_ratios_one_line(tmp_path):
    equal = generate_shapes_dataset(root=tmp_path / "e", class_ratios=[2, 2, 2, 2], **SMALL)
    default = generate_shapes_dataset(root=tmp_path / "d", **SMALL)
    assert _contents(equal) == _contents(default)
    for bad in ([1, 1, 1], [1, -1, 1, 1], [0, 0, 0, 0], [1, float("nan"), 1, 1]):
        with pytest.raises(DatasetError, match="class_ratios must be 4 non-negative") as info:
            generate_shapes_dataset(root=tmp_path / "bad", class_ratios=bad, **SMALL)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- bounded, careful
TINY = {"num_train": 2, "num_val": 1, "image_size": 32}


def _tree(folder) -> dict:
    """Every path under and beside ``folder`` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder.parent)): None if p.is_dir() else p.read_bytes()
            for p in sorted(folder.parent.rglob("*"))}


@pytest.mark.parametrize(("where", "make"), [
    ("a note beside the set", lambda root: (root / "notes.txt").write_text("keep")),
    ("a file in a split folder", lambda root: (root / "train" / "holiday.png").write_text("x")),
    ("an image index past the manifest's count",
     lambda root: (root / "val" / "000007.png").write_text("x")),
    ("a folder of one's own", lambda root: (root / "mine").mkdir()),
    ("a link in a split folder",
     lambda root: (root / "train" / "000001.png").unlink() or (
         root / "train" / "000001.png").symlink_to(root.parent / "elsewhere.txt")),
    ("a manifest of another tool", lambda root: (root / "manifest.json").write_text(
        json.dumps({"generator": "other", "num_train": 2, "num_val": 1}))),
])
def test_a_set_with_anything_else_in_it_is_never_replaced(where, make, tmp_path):
    """Regenerating with other parameters used to ``rmtree`` any folder holding a manifest."""
    (tmp_path / "elsewhere.txt").write_text("not ours")
    root = generate_shapes_dataset(root=tmp_path / "s", **TINY)
    make(root)
    before = _tree(root)
    with pytest.raises(DatasetError, match="refusing to overwrite") as info:
        generate_shapes_dataset(root=root, **{**TINY, "num_train": 3})
    assert "\n" not in str(info.value)
    assert _tree(root) == before, where


def test_a_link_or_a_file_as_root_is_never_replaced(tmp_path):
    real = generate_shapes_dataset(root=tmp_path / "real", **TINY)
    (tmp_path / "link").symlink_to(real)
    before = _tree(real)
    with pytest.raises(DatasetError, match="is a symbolic link; refusing to overwrite"):
        generate_shapes_dataset(root=tmp_path / "link", **{**TINY, "num_val": 2})
    assert generate_shapes_dataset(root=tmp_path / "link", **TINY) == tmp_path / "link"  # reads
    assert _tree(real) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder; refusing to overwrite"):
        generate_shapes_dataset(root=tmp_path / "file", **TINY)
    assert (tmp_path / "file").read_text() == "x"


def test_replacing_removes_exactly_the_old_sets_files(tmp_path):
    root = generate_shapes_dataset(root=tmp_path / "s", **{**TINY, "num_train": 4})
    generate_shapes_dataset(root=root, **TINY)
    fresh = generate_shapes_dataset(root=tmp_path / "fresh", **TINY)
    assert _contents(root) == _contents(fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "s"]


@pytest.mark.parametrize(("params", "names"), [
    ({"num_train": 10**9}, "num_train must be an integer in [1, 100000], got 1000000000"),
    ({"num_val": 0}, "num_val must be an integer in [1, 100000], got 0"),
    ({"num_train": True}, "num_train must be an integer in [1, 100000], got True"),
    ({"num_train": "5"}, "num_train must be an integer in [1, 100000], got '5'"),
    ({"image_size": 60_000}, "image_size must be an integer in [32, 2048]"),
    ({"image_size": 8}, "image_size must be an integer in [32, 2048]"),
    ({"seed": -1}, "seed must be an integer in [0, 4294967295]"),
    ({"seed": 10**400}, "seed must be an integer in [0, 4294967295], got an integer of ~401"),
    ({"num_train": 100_000, "num_val": 100_000, "image_size": 2048}, "is too large"),
    ({"class_ratios": "abcd"}, "class_ratios must be 4 non-negative numbers"),
    ({"class_ratios": [1, 1, 1, 10**400]}, "class_ratios must be 4 non-negative numbers"),
], ids=["num_train", "num_val_0", "bool", "string", "size_huge", "size_small", "seed",
        "seed_huge", "pixels", "ratios_string", "ratios_huge"])
def test_every_parameter_has_a_range_checked_before_anything_is_written(params, names,
                                                                         tmp_path, monkeypatch):
    from detector.data import shapes

    # bounded even where the check is missing: a billion images would fill the disk
    monkeypatch.setattr(shapes, "_write_split",
                        lambda *args, **kwargs: pytest.fail("generation began unchecked"))
    with pytest.raises(DatasetError) as info:
        generate_shapes_dataset(root=tmp_path / "s", **{**TINY, **params})
    assert names in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_set_that_may_not_fit_the_disk_is_refused_first(tmp_path, monkeypatch):
    import shutil as real_shutil

    from detector.data import shapes_folder

    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shapes_folder.shutil, "disk_usage",
                        lambda path: usage._replace(free=1000))
    with pytest.raises(DatasetError, match=r"may not fit in the 0\.00 GB free"):
        generate_shapes_dataset(root=tmp_path / "s", **TINY)
    assert list(tmp_path.iterdir()) == []


def _leftover(parent, pid: int, *, extra: str | None = None, age: float = 3600):
    """A temporary folder as a run killed mid-way leaves it (manifest first, some images)."""
    tmp = parent / f".s.generating-{pid}-k1ll3d"
    (tmp / "train").mkdir(parents=True)
    (tmp / "annotations").mkdir()
    (tmp / "manifest.json").write_text(json.dumps(
        {"generator": "shapes", "version": 2, "num_train": 5, "num_val": 1, "image_size": 32,
         "seed": 0}))
    (tmp / "train" / "000000.png").write_bytes(b"\x89PNG partial")
    if extra:
        (tmp / extra).write_text("not the generator's")
    for path in (tmp, tmp / "train", tmp / "annotations"):
        os.utime(path, (time.time() - age, time.time() - age))
    return tmp


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(tmp_path):
    gone = _leftover(tmp_path, 999_999_999)  # no such process: past the kernel's pid_max
    foreign = _leftover(tmp_path, 999_999_998, extra="diary.txt")
    running = _leftover(tmp_path, os.getpid(), age=0)  # a live process, writing now
    long_idle = tmp_path / ".other.generating-999999999-x"  # another root's: not ours to judge
    long_idle.mkdir()
    generate_shapes_dataset(root=tmp_path / "s", **TINY)
    assert not gone.exists()
    assert (foreign / "diary.txt").exists() and (foreign / "train" / "000000.png").exists()
    assert running.exists() and long_idle.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [foreign.name, running.name, long_idle.name, "s"])


def test_a_temporary_folder_idle_for_a_day_goes_even_if_its_pid_is_reused(tmp_path):
    old = _leftover(tmp_path, os.getpid(), age=2 * 24 * 3600)
    generate_shapes_dataset(root=tmp_path / "s", **TINY)
    assert not old.exists()


def test_an_interrupted_generation_leaves_no_temporary_folder(tmp_path, monkeypatch):
    from detector.data import shapes

    def interrupted(root, split, *args, **kwargs):
        (root / split).mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "_write_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes_dataset(root=tmp_path / "s", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_generate_false_reads_a_set_and_never_writes(tmp_path):
    with pytest.raises(DatasetError, match=r"is not at .*missing \(there is none there\); a "
                                           r"description never generates data"):
        ShapesDetection(root=tmp_path / "missing", split="val", generate=False, **TINY)
    root = generate_shapes_dataset(root=tmp_path / "s", **TINY)
    before = _tree(root)
    with pytest.raises(DatasetError, match="the set there differs in num_val"):
        ShapesDetection(root=root, split="val", generate=False, **{**TINY, "num_val": 2})
    assert len(ShapesDetection(root=root, split="val", generate=False, **TINY)) == 1
    assert _tree(root) == before and sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    with pytest.raises(DatasetError, match="split must be one of"):
        ShapesDetection(root=root, split=["val"], generate=False, **TINY)


def test_existing_shapes_dataset_cannot_be_told_to_generate(tmp_path):
    with pytest.raises(DatasetError, match="may not set generate"):
        existing_shapes_dataset(root=tmp_path / "s", split="val", generate=True, **TINY)
    assert list(tmp_path.iterdir()) == []
