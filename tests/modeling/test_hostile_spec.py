"""A checkpoint is plain data that can still do harm: it must never delete, write, hang or crash.

Found by hostile testers (issue #26): a checkpoint whose ``dataset.val.root`` named a folder
holding a ``manifest.json`` made eval/serve/inspect_model empty that folder and refill it with
generated images (exit 0); a new path got ~750 files; ``min_size=10**400`` or a 60,000 px size
crashed or took 10-86 GB. Describing data is not making it, and every number has a range.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from helpers.run_tool import run_tool
from helpers.tiny_checkpoint import TINY_CLASSES, tiny_model_spec

from detector.data import SHAPES_CLASS_NAMES, DatasetError, ShapesDetection
from detector.data import generate_shapes_dataset as generate
from detector.modeling.box_head import MLPBoxHead
from detector.modeling.spec import (
    MAX_PARAMETERS,
    SpecError,
    build_from_spec,
    check_checkpoint,
    dataset_from_checkpoint,
    model_from_checkpoint,
)
from detector.web import sample_images

SMALL = {"num_train": 2, "num_val": 3, "image_size": 64}


def _listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (and beside it) with its bytes (None for a folder)."""
    return {str(p.relative_to(folder.parent)): None if p.is_dir() else p.read_bytes()
            for p in sorted(folder.parent.rglob("*"))}


def _shapes_val(root: Path, **params) -> dict:
    return {"_target_": "detector.data.ShapesDetection", "root": str(root), "split": "val",
            **{**SMALL, **params},
            "transforms": {"_target_": "detector.data.build_transforms", "train": False,
                           "min_size": 64, "max_size": 64}}


def _state(val: dict) -> dict:
    model = build_from_spec(tiny_model_spec(len(TINY_CLASSES)))
    return {"model": model.state_dict(), "class_names": list(SHAPES_CLASS_NAMES),
            "config": {"model": tiny_model_spec(), "dataset": {"name": "shapes", "val": val}}}


@pytest.fixture
def victim(tmp_path) -> Path:
    """A folder of someone's files that also holds a ``manifest.json`` (here: a shapes set made
    with other parameters, plus notes and a subfolder): what the attack used to empty."""
    root = generate(root=tmp_path / "data" / "victim", num_train=1, num_val=1, image_size=32)
    (root / "notes.txt").write_text("keep me")
    (root / "mine").mkdir()
    (root / "mine" / "thesis.tex").write_text("\\begin{document}")
    return root


def test_a_checkpoint_never_empties_a_folder_with_a_manifest(victim):
    before = _listing(victim)
    with pytest.raises(DatasetError) as info:
        dataset_from_checkpoint(_state(_shapes_val(victim)), source="x.pth")
    message = str(info.value)
    assert message.startswith("checkpoint x.pth: the shapes dataset described") and (
        "\n" not in message), message
    assert "differs in num_train, num_val, image_size" in message
    assert (f"dataset=shapes dataset.root={victim} dataset.num_train=2 dataset.num_val=3 "
            "dataset.image_size=64 (generated there if absent), or train once") in message
    assert _listing(victim) == before


def test_nor_when_the_folder_is_exactly_a_generated_set_with_other_parameters(tmp_path):
    root = generate(root=tmp_path / "data" / "set", num_train=1, num_val=1, image_size=32)
    before = _listing(root)
    with pytest.raises(DatasetError, match="is not at .*set \\(the set there differs"):
        dataset_from_checkpoint(_state(_shapes_val(root)))
    assert _listing(root) == before


def test_a_checkpoint_writes_nothing_at_a_new_path(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError, match=r"\(there is none there\)"):
        dataset_from_checkpoint(_state(_shapes_val(tmp_path / "data" / "new" / "shapes")))
    assert list((tmp_path / "data").iterdir()) == []


def test_the_described_set_when_there_is_read_and_left_as_it_is(tmp_path):
    root = generate(root=tmp_path / "data" / "shapes", **SMALL)
    before = _listing(root)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    dataset = dataset_from_checkpoint(_state(_shapes_val(root)))
    assert isinstance(dataset, ShapesDetection) and len(dataset) == 3
    assert _listing(root) == before
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_a_checkpoint_cannot_switch_generation_on(tmp_path):
    state = _state({**_shapes_val(tmp_path / "new"), "generate": True})
    with pytest.raises(SpecError, match=r"dataset\.val\.generate: a description never "
                                        r"generates data"):
        dataset_from_checkpoint(state)
    assert not (tmp_path / "new").exists()


def test_the_web_samples_never_generate_either(victim, tmp_path):
    before = _listing(victim)
    assert sample_images({"name": "shapes", "val": _shapes_val(victim)}) == []
    assert sample_images({"name": "shapes", "val": _shapes_val(tmp_path / "new")}) == []
    assert _listing(victim) == before and not (tmp_path / "new").exists()


def test_eval_of_such_a_checkpoint_exits_2_in_one_line_and_leaves_the_folder(victim,
                                                                            tiny_checkpoint):
    state = copy.deepcopy(torch.load(tiny_checkpoint, weights_only=True))
    state["class_names"] = list(SHAPES_CLASS_NAMES)
    state["config"]["dataset"]["val"] = _shapes_val(victim)
    path = victim.parent / "crafted.pth"
    torch.save(state, path)
    before = _listing(victim)
    done = run_tool("eval.py", [f"checkpoint={path}", "device=cpu", "num_workers=0",
                                "num_visualize=0"], cwd=victim.parent)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(
        f"error: checkpoint {path}: the shapes dataset described"), done.stderr
    after = _listing(victim)
    assert {k: v for k, v in after.items() if not k.startswith("outputs")} == before


# ---------------------------------------------------------------------------- number ranges
def _checked(change) -> str:
    state = _state(_shapes_val(Path("/nowhere")))
    change(state)
    with pytest.raises(SpecError) as info:
        check_checkpoint(state, source="c.pth")
    message = str(info.value)
    assert message.startswith("checkpoint c.pth: ") and "\n" not in message, message
    return message


def _val(key, value):
    return lambda s: s["config"]["dataset"]["val"].__setitem__(key, value)


def _transforms(key, value):
    return lambda s: s["config"]["dataset"]["val"]["transforms"].__setitem__(key, value)


def _model(key, value):
    return lambda s: s["config"]["model"].__setitem__(key, value)


@pytest.mark.parametrize(("change", "names"), [
    (lambda s: s["config"]["dataset"].update(min_size=10**400),
     "dataset.min_size must be a positive integer of at most 4096 (pixels), got an integer of "
     "~401 digits"),
    (lambda s: s["config"]["dataset"].update(max_size=60_000), "dataset.max_size must be a "
                                                               "positive integer of at most 4096"),
    (_transforms("max_size", 60_000),
     "dataset.val.transforms.max_size must be an integer in [1, 4096], got 60000"),
    (_transforms("min_size", 4097), "dataset.val.transforms.min_size must be an integer in"),
    (_transforms("min_size", 64.5), "dataset.val.transforms.min_size must be an integer in"),
    (_transforms("hflip_prob", 7.0), "dataset.val.transforms.hflip_prob must be a number in "
                                     "[0, 1]"),
    (_val("num_train", 10**9), "dataset.val.num_train must be an integer in [1, 100000]"),
    (_val("num_val", True), "dataset.val.num_val must be an integer in [1, 100000], got True"),
    (_val("image_size", 60_000), "dataset.val.image_size must be an integer in [32, 2048]"),
    (_val("seed", -1), "dataset.val.seed must be an integer in [0, 4294967295]"),
    (_val("root", "a\x00b"), "dataset.val.root is not a sane string"),
    (_val("root", "x" * 5000), "dataset.val.root is not a sane string"),
    (_val("keep_empty", 2**60), "dataset.val.keep_empty 1152921504606846976 is out of range"),
    (_val("on_bad", math.inf), "dataset.val.on_bad inf is out of range"),
    (_val("x" * 500, 1), "has a key 'xxxx"),
    (_model("hidden_dim", 10**6), "model.hidden_dim must be an integer in [1, 16384]"),
    (_model("rpn_pre_nms_top_n", [10**9, 1]),
     "model.rpn_pre_nms_top_n[0] must be an integer in [1, 1000000]"),
    (_model("score_threshold", math.nan), "model.score_threshold nan is out of range"),
    (_model("max_detections", [[[5]]]), "model.max_detections[0][0] must be an integer"),
    (lambda s: s.update(iteration=-1), "iteration must be an integer in [0, 10**12], got -1"),
    (lambda s: s.update(iteration=10**400), "iteration must be an integer in [0, 10**12], got "
                                            "an integer of ~401 digits"),
    (lambda s: s.update(class_names=["c"] * 20_000),
     "class_names must be a non-empty list of at most 10000 strings"),
], ids=["min_size_huge", "max_size", "transforms_max", "transforms_min", "transforms_float",
        "hflip", "num_train", "num_val_bool", "image_size", "seed", "nul", "long_text",
        "int_2_60", "inf", "long_key", "hidden_dim", "top_n", "nan", "nested_list",
        "iteration_negative", "iteration_huge", "classes"])
def test_every_number_has_a_range_checked_before_anything_is_built(change, names):
    assert names in _checked(change)


def test_the_configs_own_values_are_in_range():
    """What tools/train_net.py writes for the shapes set passes (the ranges refuse no real run)."""
    check_checkpoint(_state(_shapes_val(Path("/data"), num_train=600, num_val=150,
                                        image_size=128, seed=0)))


def test_a_model_too_large_is_refused_before_any_memory_is_taken(monkeypatch):
    """box_head 8192 x 64 x 64 -> 16384: 550 G weights (2.2 TB), refused from a meta build."""
    state = _state(_shapes_val(Path("/nowhere")))
    real_init = MLPBoxHead.__init__

    def only_on_meta(self, **kwargs):  # bounded even where the check is missing
        if torch.empty(0).device.type != "meta":
            pytest.fail("the box head was built in memory before its size was checked")
        real_init(self, **kwargs)

    monkeypatch.setattr(MLPBoxHead, "__init__", only_on_meta)
    state["config"]["model"]["box_head"].update(in_channels=8192, resolution=64,
                                                hidden_dim=16384)
    with pytest.raises(SpecError, match=rf"builds [0-9,]+ weights \(at most {MAX_PARAMETERS:,}\)"):
        model_from_checkpoint(state, source="big.pth")


def test_weights_that_do_not_fit_are_named_before_the_model_is_built():
    state = _state(_shapes_val(Path("/nowhere")))
    state["config"]["model"]["box_head"]["hidden_dim"] = 64  # the weights are 32 wide
    with pytest.raises(SpecError, match=r"^checkpoint w\.pth: its weights do not fit its model "
                                        r"description: roi_head\.box_head\.fc6\.weight is "
                                        r"\(32, 25088\) there, \(64, 25088\) here$"):
        model_from_checkpoint(state, source="w.pth")


def test_a_checkpoint_never_compiles(monkeypatch):
    """compile=true would run torch.compile (caches written, compiler processes started)."""
    state = _state(_shapes_val(Path("/nowhere")))
    state["config"]["model"]["compile"] = True
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **k: pytest.fail("a checkpoint compiled a module"))
    model = model_from_checkpoint(state)
    assert not model.training


def test_a_plain_json_description_round_trips():
    """The ranges read plain JSON-like data: a description saved as JSON checks the same."""
    state = _state(_shapes_val(Path("/data")))
    state["config"] = json.loads(json.dumps(state["config"]))
    check_checkpoint(state)


def test_no_range_refuses_what_a_config_of_this_project_trains():
    """Every experiment (with its own dataset) and every dataset, resolved as
    tools/train_net.py stores them, pass."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    configs = Path(__file__).resolve().parents[2] / "configs"
    runs = [[f"experiment={p.stem}"] for p in sorted((configs / "experiment").glob("*.yaml"))]
    runs += [[f"dataset={p.stem}"] for p in sorted((configs / "dataset").glob("*.yaml"))]
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        for overrides in runs:
            config = OmegaConf.to_container(compose(config_name="train", overrides=overrides),
                                            resolve=True)
            check_checkpoint({"config": config, "class_names": ["a"], "model": {}},
                             source=str(overrides))
