"""tools/inspect_model.py end to end, in process, on two tiny checkpoints: the report names the
channel that was switched off (prunable by its BN gamma, dead after its ReLU) in both runs' columns,
and writes one histogram grid per block plus the gamma and activation figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_training
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from detector.data import generate_shapes_dataset
from detector.modeling.spec import MODEL_CONSTRUCTORS
from detector_cli import inspect_model

PROJECT_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # the whole tool: two models, a dataset, ~70 matplotlib axes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEAD = 3  # channel of the tiny backbone's first BN switched off: gamma 0, beta -1


def _tool():
    return inspect_model  # what tools/inspect_model.py runs


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _checkpoint(path: Path, data_root: Path, *, seed: int, name: str) -> Path:
    import hydra

    cfg = _compose("train", [*tiny_training.CLI_OVERRIDES, f"dataset.root={data_root}",
                             "dataset.num_train=4", "dataset.num_val=3", f"name={name}"])
    torch.manual_seed(seed)
    model = hydra.utils.instantiate(cfg.model, num_classes=4)
    with torch.no_grad():
        model.backbone.body[1].weight[DEAD] = 0.0
        model.backbone.body[1].bias[DEAD] = -1.0
    torch.save({"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True),
                "class_names": ["circle", "square", "triangle", "star"],
                "label_to_cat_id": {1: 1, 2: 2, 3: 3, 4: 4}}, path)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    # the checkpoints describe this set; a description never generates it
    generate_shapes_dataset(root=tmp / "shapes", num_train=4, num_val=3, image_size=64)
    a = _checkpoint(tmp / "a.pth", tmp / "shapes", seed=0, name="ce_tiny")
    b = _checkpoint(tmp / "b.pth", tmp / "shapes", seed=1, name="focal_tiny")
    cfg = _compose("inspect", [f"checkpoint={a}", f"checkpoint_b={b}", "num_images=3",
                               f"output_dir={tmp / 'out'}", "device=cpu"])
    with pytest.MonkeyPatch.context() as patch:  # the checkpoints name the tiny backbone
        patch.setitem(MODEL_CONSTRUCTORS, tiny_training.BACKBONE, tiny_training.TinyBackbone)
        return _tool().run(cfg)


def _row(text: str, section: str, first_cell: str) -> str:
    lines = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0].splitlines()
    return next(line for line in lines if line.startswith(f"| {first_cell} |"))


def test_report_names_the_switched_off_channel_in_both_runs(report):
    text = report.read_text()
    assert "**A** = **ce_tiny**" in text and "**B** = **focal_tiny**" in text
    assert "| near 0 (abs) (A) | near 0 (abs) (B) |" in text  # side by side
    gamma_row = _row(text, "BN gammas", "backbone.body.1")
    assert gamma_row.count(f"1 ({DEAD})") == 2  # prunable in each run
    relu_row = _row(text, "Activations after ReLU", "backbone.body.2")
    assert relu_row.count(f"({DEAD}") == 2  # dead after its ReLU in each run (maybe with others)
    assert "|w| < 0.001" in text and "0.01 x the layer's max |w|" in text  # thresholds stated
    assert "Validation images (ce_tiny: 3, focal_tiny: 3)" in text


def test_figures_are_pngs(report):
    names = {p.name for p in report.parent.glob("*.png")}
    assert {"weights_backbone.body.png", "weights_rpn_head.png", "weights_roi_head.png",
            "bn_gamma.png", "activations.png"} <= names
    for name in names:
        assert (report.parent / name).read_bytes()[:8] == PNG_MAGIC
        assert f"({name})" in report.read_text()  # linked from the report


def test_bad_values_are_one_line_errors(tmp_path):
    tool = _tool()
    with pytest.raises(tool.ConfigError, match="num_images"):
        tool.run(_compose("inspect", ["num_images=-1"]))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        tool.run(_compose("inspect", [f"checkpoint={tmp_path / 'missing.pth'}"]))
