"""``train.eval_metric``: training's periodic evaluation adds the Pascal VOC mAP (``VOC07`` /
``VOC``) to its COCO metrics when asked (detector/engine/validation.py), and the config check
(detector_cli/checks.py) refuses bad values and a VOC ``train.best_metric`` that is not
evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny_checkpoint import TINY_SIZE
from hydra import compose, initialize_config_dir

from detector.data import ShapesDetection, build_dataloader, build_transforms
from detector.engine.guard import StopSignal
from detector.engine.schedules import Phase
from detector.engine.validation import PeriodicEvaluation
from detector.evaluation.voc_eval import evaluate_voc
from detector.modeling.spec import model_from_checkpoint, read_checkpoint
from detector_cli import checks

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
WHOLE = Phase(name="end_to_end", iterations=4, train_modules=("backbone", "rpn_head", "roi_head"),
              losses=("loss_cls",))


class _Logger:
    def __init__(self) -> None:
        self.points: list[dict] = []

    def eval_point(self, *, phase: str, iteration: int, metrics: dict) -> None:
        self.points.append(metrics)


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    model = model_from_checkpoint(read_checkpoint(tiny_checkpoint), source=tiny_checkpoint)
    transforms = build_transforms(train=False, min_size=TINY_SIZE, max_size=TINY_SIZE)
    val = ShapesDetection(root=tmp_path_factory.mktemp("data") / "shapes", split="val",
                          num_train=1, num_val=2, image_size=TINY_SIZE, transforms=transforms)
    return model, build_dataloader(dataset=val, batch_size=2, train=False)


def _run(setup, metrics):
    model, loader = setup
    logger = _Logger()
    evaluation = PeriodicEvaluation(loader=loader, period=1, device=torch.device("cpu"),
                                    precision="fp32", progress=False, logger=logger,
                                    stop_signal=StopSignal(), metrics=metrics)
    result = evaluation.run(model, WHOLE, 3)
    assert logger.points == [result] and evaluation.last_metrics == result
    return result, evaluation


def test_voc_keys_join_the_coco_metrics_when_asked(setup):
    plain, _ = _run(setup, ("coco",))
    assert "AP50" in plain and "VOC07" not in plain and "VOC" not in plain
    both, evaluation = _run(setup, ("coco", "voc07", "voc"))
    assert both["AP50"] == plain["AP50"]
    assert isinstance(both["VOC07"], float) and isinstance(both["VOC"], float)
    assert set(both["VOC07_per_class"]) == set(setup[1].dataset.class_names)
    from detector.evaluation.coco_eval import detections_to_coco_results
    dataset = setup[1].dataset
    results = detections_to_coco_results(evaluation.last_detections,
                                         label_to_cat_id=dataset.label_to_cat_id)
    reference = evaluate_voc(dataset.coco, results, metric="voc07",
                             img_ids=sorted(d["image_id"] for d in evaluation.last_detections))
    assert both["VOC07"] == reference["VOC07"]


def _train(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[
            f"output_dir={tmp_path / 'run'}", f"dataset.root={tmp_path / 'shapes'}",
            "dataset.num_train=8", "dataset.num_val=4", "dataset.image_size=64", "device=cpu",
            *overrides])


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.eval_metric=map"], "train.eval_metric must be one of coco, voc07, voc or a list"),
    (["train.eval_metric=[]"], "train.eval_metric must be one of"),
    (["train.eval_period=5", "train.best_metric=VOC07"],
     r"train.best_metric=VOC07 needs train.eval_metric to include voc07 \(e.g. "
     r"train.eval_metric=\[coco,voc07\]\)"),
    (["train.eval_period=5", "train.best_metric=VOC", "train.eval_metric=voc07"],
     "train.best_metric=VOC needs train.eval_metric to include voc "),
])
def test_bad_train_eval_metric_values_are_config_errors(overrides, message, tmp_path):
    with pytest.raises(checks.ConfigError, match=message):
        checks.check_train_config(_train(overrides, tmp_path))


def test_good_train_eval_metric_values_pass(tmp_path):
    for overrides in (["train.eval_period=5", "train.best_metric=VOC07",
                       "train.eval_metric=[coco,voc07]"], ["train.eval_metric=voc"], []):
        checks.check_train_config(_train(overrides, tmp_path))


def test_train_eval_metric_reaches_the_trainers_cadence(tmp_path):
    from detector_cli.train import build_options
    options = build_options(_train(["train.eval_metric=[coco,voc07,voc07]"], tmp_path),
                            torch.device("cpu"))
    assert options.cadence.eval_metrics == ("coco", "voc07")
    assert build_options(_train([], tmp_path), torch.device("cpu")).cadence.eval_metrics == ("coco",)
