"""loss=ohem, loss=class_balanced_ce and loss=class_balanced_focal end to end (marked slow):
tiny runs on the imbalanced shapes set (experiment=ce_imbalanced) and the 4-step schedule
(experiment=two_stage); the class counts are taken once from the training set, logged, written as
numbers into config.json and the checkpoints, reused by a resumed run, and tools/eval.py rebuilds
the model from the checkpoint without them being counted again. A bad beta or count list is one
line and exit code 2. The command lines run in this process (helpers/run_tool.py)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import hydra
import numpy as np
import pytest
import torch
from helpers.run_tool import run_tool
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from detector.checkpoint import load_checkpoint
from detector.data import ShapesDetection, generate_shapes_dataset
from detector.data.dataset import ImageRecord
from detector.ops.class_balance import class_balanced_alpha
from detector.ops.losses import SoftmaxFocalLoss
from detector_cli.class_counts import settle_class_weights

STEPS = ("rpn", "fast_rcnn", "rpn_finetune", "fast_rcnn_finetune")
RATIOS = [1, 1, 1, 0.1]  # experiment=ce_imbalanced's
TINY = ["dataset.num_train=16", "dataset.num_val=8", "dataset.image_size=64",
        "dataset.min_size=64", "dataset.max_size=64", "dataset.roi_num_samples=16",
        "batch_size=2", "num_workers=0", "train.progress=false", "train.eval_batch_size=8",
        "train.log_period=1", "device=cpu"]
IMBALANCED = ["experiment=ce_imbalanced", "schedule.iterations=2", "train.checkpoint_period=2"]
TWO_STAGE = ["experiment=two_stage", *(f"schedule.{step}_iterations=1" for step in STEPS)]
CB_LINE = "class-balanced ROI weights"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imbalance_losses")


@pytest.fixture(scope="module")
def shapes_root(workdir) -> Path:
    return generate_shapes_dataset(root=workdir / "shapes", num_train=16, num_val=8,
                                   image_size=64, class_ratios=RATIOS)


def _ok(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    return output


def _train(workdir: Path, shapes_root: Path, name: str, overrides: list[str]):
    run_dir = workdir / name
    ratios = f"dataset.class_ratios=[{','.join(map(str, RATIOS))}]"
    output = _ok(run_tool("train_net.py", [*overrides, f"dataset.root={shapes_root}", ratios,
                                           *TINY, f"output_dir={run_dir}"], cwd=workdir))
    config = json.loads((run_dir / "config.json").read_text())
    return run_dir, output, config


def _expected_counts(shapes_root: Path) -> list[int]:
    train = ShapesDetection(root=shapes_root, split="train", num_train=16, num_val=8,
                            image_size=64, class_ratios=RATIOS)
    labels = torch.cat([torch.as_tensor(r.labels).reshape(-1) for r in train.records])
    return [int((labels == c).sum()) for c in range(1, len(train.class_names) + 1)]


@pytest.fixture(scope="module")
def class_balanced_run(workdir, shapes_root):
    return _train(workdir, shapes_root, "cb_ce", [*IMBALANCED, "loss=class_balanced_ce"])


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["imbalanced", "two_stage"])
def test_ohem_run(experiment, workdir, shapes_root):
    overrides = IMBALANCED if experiment == "imbalanced" else TWO_STAGE
    run_dir, _, config = _train(workdir, shapes_root, f"ohem_{experiment}",
                                [*overrides, "loss=ohem"])
    assert config["loss"]["name"] == "ohem"
    assert config["model"]["roi_num_samples"] is None  # every proposal reaches the ROI head
    assert config["loss"]["criterion"]["roi_hard_examples"] == 16  # dataset.roi_num_samples
    assert config["loss"]["criterion"]["rpn_num_samples"] == 256  # the RPN keeps its sampling
    records = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cls = [r["loss_cls"] for r in records if "loss_cls" in r]
    assert cls and all(v == v and v > 0 for v in cls)
    assert (run_dir / "checkpoints" / "final.pth").is_file()


@pytest.mark.slow
def test_class_balanced_counts_reach_config_and_checkpoints(class_balanced_run, shapes_root):
    run_dir, output, config = class_balanced_run
    balance = config["loss"]["class_balance"]
    counts = _expected_counts(shapes_root)
    assert balance["counts"] == counts and balance["beta"] == 0.999
    expected = class_balanced_alpha(counts, 0.999).tolist()
    assert balance["weights"] == pytest.approx(expected, abs=1e-6)
    assert balance["weights"][0] == 1.0  # background: the mean foreground weight
    assert config["loss"]["criterion"]["roi_cls_loss"]["alpha"] == balance["weights"]
    assert config["loss"]["criterion"]["roi_cls_loss"]["gamma"] == 0.0
    lines = [line for line in output.splitlines() if CB_LINE in line]
    assert len(lines) == 1 and f"from the {sum(counts)} training boxes" in lines[0]
    assert re.search(rf"rectangle {counts[0]} boxes -> [0-9.]+", lines[0])
    for name in ("final.pth", "iter_0000002.pth"):
        saved = load_checkpoint(run_dir / "checkpoints" / name)["config"]["loss"]
        assert saved["class_balance"] == balance
    # the criterion rebuilds from the checkpoint's config alone, no data
    saved = load_checkpoint(run_dir / "checkpoints" / "final.pth")["config"]
    criterion = hydra.utils.instantiate(saved["loss"]["criterion"])
    roi_loss = criterion.roi.cls_loss
    assert isinstance(roi_loss, SoftmaxFocalLoss)
    assert roi_loss.alpha.tolist() == pytest.approx(balance["weights"])


@pytest.mark.slow
def test_eval_rebuilds_a_class_balanced_run_without_counting(class_balanced_run, workdir):
    run_dir, _, _ = class_balanced_run
    output = _ok(run_tool("eval.py", [f"checkpoint={run_dir / 'checkpoints' / 'final.pth'}",
                                      "num_workers=0", "batch_size=8", "num_visualize=0"],
                          cwd=workdir))
    assert "Average Precision" in output and CB_LINE not in output


@pytest.mark.slow
def test_resume_keeps_the_checkpoints_counts(class_balanced_run, workdir, shapes_root):
    run_dir, _, first = class_balanced_run
    ratios = f"dataset.class_ratios=[{','.join(map(str, RATIOS))}]"
    output = _ok(run_tool("train_net.py", [*IMBALANCED, "loss=class_balanced_ce",
                                           f"dataset.root={shapes_root}", ratios, *TINY,
                                           "schedule.iterations=3", f"output_dir={run_dir}",
                                           "resume=true"], cwd=workdir))
    lines = [line for line in output.splitlines() if CB_LINE in line]
    assert len(lines) == 1 and "from the resumed run's checkpoint" in lines[0]
    resumed = json.loads((run_dir / "config.json").read_text())["loss"]["class_balance"]
    assert resumed == first["loss"]["class_balance"]


@pytest.mark.slow
def test_class_balanced_focal_two_stage_run(workdir, shapes_root):
    _, output, config = _train(workdir, shapes_root, "cb_focal_two_stage",
                               [*TWO_STAGE, "loss=class_balanced_focal"])
    roi_loss = config["loss"]["criterion"]["roi_cls_loss"]
    assert roi_loss["gamma"] == 2.0 and roi_loss["alpha"] == config["loss"]["class_balance"][
        "weights"]
    assert len(roi_loss["alpha"]) == 5 and CB_LINE in output
    assert config["loss"]["criterion"]["rpn_num_samples"] == 256  # loss=focal's sampled RPN


@pytest.mark.slow
@pytest.mark.parametrize("override,shown", [
    ("loss.class_balance.beta=1.5", "loss.class_balance.beta must be a number in [0, 1]"),
    ("loss.class_balance.counts=[3,1]", "loss.class_balance.counts must be auto or a list of 4 "
                                        "non-negative integers"),
])
def test_bad_class_balance_value_is_one_line(override, shown, workdir, shapes_root):
    result = run_tool("train_net.py", [*IMBALANCED, "loss=class_balanced_ce", override,
                                       f"dataset.root={shapes_root}", *TINY,
                                       f"output_dir={workdir / 'bad'}"], cwd=workdir)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-4000:]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and shown in errors[0], output
    assert not (workdir / "bad").exists()


# ---------------------------------------------------------------- composition, no training
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def _records(labels_per_image: list[list[int]]) -> list[ImageRecord]:
    return [ImageRecord(i, Path("/nonexistent.png"), 64, 64,
                        np.tile(np.array([[1, 1, 20, 20]], np.float32), (len(labels), 1)),
                        np.asarray(labels, np.int64))
            for i, labels in enumerate(labels_per_image)]


@pytest.fixture(scope="module")
def compose_train():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        yield lambda overrides: compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("loss", ["ohem", "class_balanced_ce", "class_balanced_focal"])
def test_every_experiment_takes_the_loss(experiment, loss, compose_train):
    cfg = compose_train([f"experiment={experiment}", f"loss={loss}"])
    assert cfg.loss.name == loss
    if loss == "ohem":
        assert cfg.model.roi_num_samples is None
        assert cfg.loss.criterion.roi_hard_examples == cfg.dataset.roi_num_samples
    else:
        assert cfg.loss.class_balance.counts == "auto"
        num_classes = 3  # the fake training set's (the counts come from it, not the config)
        train_set = SimpleNamespace(class_names=[f"c{i}" for i in range(num_classes)],
                                    records=_records([[1] * 9 + list(range(1, num_classes + 1))]))
        settle_class_weights(cfg, train_set)
        assert list(cfg.loss.class_balance.counts) == [10] + [1] * (num_classes - 1)
        assert len(cfg.loss.criterion.roi_cls_loss.alpha) == num_classes + 1
    criterion = hydra.utils.instantiate(cfg.loss.criterion)
    assert criterion.roi.hard_examples == (cfg.dataset.roi_num_samples if loss == "ohem"
                                           else None)


def test_settle_class_weights_counts_labels_and_logs_one_line(compose_train, caplog):
    cfg = compose_train(["loss=class_balanced_ce", "loss.class_balance.beta=0.5"])
    # counts (3, 1, 0, 2): beta 0.5 -> (1 - b) / (1 - b^n) = 4/7, 1, 1 (no boxes: as one), 2/3
    train_set = SimpleNamespace(class_names=["a", "b", "c", "d"],
                                records=_records([[1, 1, 4], [2, 1, 4], []]))
    with caplog.at_level(logging.INFO, logger="train_net"):
        settle_class_weights(cfg, train_set)
    assert list(cfg.loss.class_balance.counts) == [3, 1, 0, 2]
    raw = [4 / 7, 1.0, 1.0, 2 / 3]
    expected = [1.0] + [w * 4 / sum(raw) for w in raw]
    assert list(cfg.loss.criterion.roi_cls_loss.alpha) == pytest.approx(expected, abs=1e-6)
    lines = [r.getMessage() for r in caplog.records if CB_LINE in r.getMessage()]
    assert len(lines) == 1 and "from the 6 training boxes" in lines[0] and "a 3 boxes" in lines[0]


def test_given_counts_are_used_as_they_are(compose_train):
    cfg = compose_train(["loss=class_balanced_focal", "loss.class_balance.counts=[5,5,5,5]"])
    settle_class_weights(cfg, SimpleNamespace(class_names=["a", "b", "c", "d"],
                                              records=_records([[1]])))
    assert list(cfg.loss.class_balance.counts) == [5, 5, 5, 5]
    assert list(cfg.loss.criterion.roi_cls_loss.alpha) == pytest.approx([1.0] * 5)


def test_a_config_without_class_balance_is_untouched(compose_train):
    cfg = compose_train(["loss=focal"])
    before = OmegaConf.to_container(cfg.loss)
    settle_class_weights(cfg, SimpleNamespace(class_names=["a"], records=_records([[1]])))
    assert OmegaConf.to_container(cfg.loss) == before
