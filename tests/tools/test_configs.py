"""Every config under configs/ composes, resolves and instantiates; detector_cli.checks (and,
for the values the library's constructors hold, detector_cli.train.build_options) rejects bad
values with one clear line."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from detector.data import DetectionDataset
from detector.engine.optim import param_groups
from detector.engine.schedules import Phase
from detector.errors import OptionError
from detector.modeling import FasterRCNN, FasterRCNNCriterion
from detector.modeling.pooler import RoIAlign, RoIPool
from detector.ops.losses import BinaryCrossEntropy, CrossEntropy, SigmoidFocalLoss, SoftmaxFocalLoss
from detector_cli import checks as config_checks
from detector_cli.train import build_options

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "configs"
GROUPS = ("dataset", "model", "loss", "optimizer", "schedule")
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
GROUP_OPTIONS = [(group, p.stem) for group in GROUPS
                 for p in sorted((CONFIG_DIR / group).glob("*.yaml"))]
NUM_CLASSES = 3



@pytest.fixture(scope="module")
def hydra_compose():
    """compose(config_name, overrides) inside an initialised Hydra (no run: no ${hydra:...})."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        yield lambda name, overrides=(): compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def shapes_overrides(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    return [f"dataset.root={root}", "dataset.num_train=8", "dataset.num_val=4",
            "dataset.image_size=64"]


def _train_cfg(hydra_compose, overrides, tmp_path):
    return hydra_compose("train", [f"output_dir={tmp_path / 'run'}", *overrides])


def test_the_documented_options_exist():
    found = set(GROUP_OPTIONS)
    for option in (("dataset", "shapes"), ("dataset", "coco"), ("dataset", "voc"),
                   ("model", "vgg16_bn"), ("model", "vgg16_bn_align"), ("model", "vgg16_bn_fc"),
                   ("model", "vgg16_bn_roipool"), ("model", "resnet50_c4"),
                   ("loss", "ce"),
                   ("loss", "focal"), ("optimizer", "sgd"), ("optimizer", "adam"),
                   ("schedule", "end_to_end"), ("schedule", "two_stage")):
        assert option in found
    assert {"ce", "focal", "two_stage", "raccoon", "coco_tiny_overfit"} <= set(EXPERIMENTS)


def test_experiment_files_are_global_packages():
    for name in EXPERIMENTS:
        first_line = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()[0]
        assert first_line.strip() == "# @package _global_", name


# ---------------------------------------------------------------------------- build all parts
def _check_parts(cfg) -> FasterRCNN:
    """Resolve the whole config and instantiate model, criterion, optimiser and schedule."""
    resolved = OmegaConf.to_container(cfg, resolve=True)  # what train_net stores in checkpoints
    assert resolved["output_dir"] == cfg.output_dir

    model = hydra.utils.instantiate(cfg.model, num_classes=NUM_CLASSES)
    assert isinstance(model, FasterRCNN)
    assert model.num_classes == NUM_CLASSES
    assert model.roi_head.pooler.spatial_scale == pytest.approx(1 / model.backbone.stride)

    criterion = hydra.utils.instantiate(cfg.loss.criterion)
    assert isinstance(criterion, FasterRCNNCriterion)

    make_optimizer = hydra.utils.instantiate(cfg.optimizer)
    optimizer = make_optimizer(param_groups(model, weight_decay=cfg.optimizer.weight_decay))
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    assert [g["weight_decay"] for g in optimizer.param_groups] == [cfg.optimizer.weight_decay, 0.0]

    phases = hydra.utils.instantiate(cfg.schedule.phases)
    assert phases and all(isinstance(p, Phase) and p.iterations >= 1 for p in phases)
    for phase in phases:
        factor = hydra.utils.instantiate(cfg.schedule.lr)(total_iters=phase.iterations)
        values = [factor(it) for it in range(phase.iterations + 1)]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert values[0] > 0.0
    return model


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, hydra_compose, tmp_path):
    cfg = _train_cfg(hydra_compose, [f"experiment={experiment}"], tmp_path)
    _check_parts(cfg)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_group_option_composes_and_instantiates(group, option, hydra_compose, tmp_path):
    cfg = _train_cfg(hydra_compose, [f"{group}={option}"], tmp_path)
    if group in ("dataset", "loss", "schedule"):  # their name goes into logs and run names
        assert cfg[group].name == option
    model = _check_parts(cfg)
    if group == "model":  # the parts fit together: a forward pass on one small image
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 32, 32), torch.tensor([[32, 32]]), detect=True)
            (det,) = model.detect(out)
        assert det["boxes"].shape[1:] == (4,)


def test_roi_align_is_the_default_and_roi_pool_one_word_away(hydra_compose, tmp_path):
    """The default model pools with RoIAlign (7 x 7, 2 x 2 samples, aligned); the paper's RoIPool
    is model=vgg16_bn_roipool or model/pooler=roi_pool, the same pooler either way; the paper's
    configs (fc6/fc7 head, 4-step schedule) keep RoIPool; vgg16_bn_align is the default now."""
    pooler = _check_parts(_train_cfg(hydra_compose, [], tmp_path)).roi_head.pooler
    assert isinstance(pooler, RoIAlign)
    assert (pooler.output_size, pooler.sampling_ratio, pooler.aligned) == ((7, 7), 2, True)
    alias = _check_parts(_train_cfg(hydra_compose, ["model=vgg16_bn_align"], tmp_path))
    assert repr(alias.roi_head.pooler) == repr(pooler)
    pools = [_check_parts(_train_cfg(hydra_compose, overrides, tmp_path)).roi_head.pooler
             for overrides in (["model=vgg16_bn_roipool"], ["model/pooler=roi_pool"],
                               ["model=vgg16_bn_fc"], ["experiment=two_stage"])]
    assert all(isinstance(pool, RoIPool) and pool.output_size == (7, 7) for pool in pools)


@pytest.mark.parametrize("model_option", ["vgg16_bn_fc", "vgg16_bn_align", "vgg16_bn_roipool",
                                          "resnet50_c4"])
def test_model_options_inherit_vgg16_bn_and_change_only_their_part(model_option, hydra_compose,
                                                                   tmp_path):
    """Options are vgg16_bn plus their differences (``defaults``), so they cannot drift from it
    (vgg16_bn_fc, once a copy, had lost ``output_stride``)."""
    changed = {"vgg16_bn_fc": {"box_head", "pooler"}, "vgg16_bn_align": set(),
               "vgg16_bn_roipool": {"pooler"},
               "resnet50_c4": {"backbone", "box_head"}}[model_option]
    base = OmegaConf.to_container(_train_cfg(hydra_compose, [], tmp_path).model)
    option = OmegaConf.to_container(
        _train_cfg(hydra_compose, [f"model={model_option}"], tmp_path).model)
    assert option.keys() == base.keys()
    assert {key for key in base if option[key] != base[key]} == changed


@pytest.mark.parametrize("model_option", ["vgg16_bn", "vgg16_bn_fc", "vgg16_bn_align",
                                          "vgg16_bn_roipool", "resnet50_c4"])
def test_the_backbone_is_built_before_the_box_head(model_option, hydra_compose, tmp_path):
    """Hydra builds a node's arguments in key order, and each draws its initial weights from the
    seeded generator: the backbone first, then the box head, or a seed gives other weights (and
    every measured figure moves) although the configuration is the same."""
    keys = list(_train_cfg(hydra_compose, [f"model={model_option}"], tmp_path).model)
    assert keys.index("backbone") < keys.index("box_head")


def test_vgg16_bn_fc_is_vgg16_bn_with_the_papers_head_and_pooler(hydra_compose, tmp_path):
    fc = _train_cfg(hydra_compose, ["model=vgg16_bn_fc"], tmp_path)
    assert fc.model.box_head._target_ == "detector.modeling.box_head.VGGBoxHead"
    assert fc.model.backbone.output_stride == 16
    assert fc.model.box_head.dropout == 0.5
    same = _train_cfg(hydra_compose, ["model/box_head=vgg_fc", "model/pooler=roi_pool"], tmp_path)
    assert OmegaConf.to_container(same.model) == OmegaConf.to_container(fc.model)


# ---------------------------------------------------------------------------- what they switch
def test_focal_experiment_switches_both_losses_and_sets_the_prior(hydra_compose, tmp_path):
    cfg = _train_cfg(hydra_compose, ["experiment=focal"], tmp_path)
    criterion = hydra.utils.instantiate(cfg.loss.criterion)
    assert isinstance(criterion.rpn.cls_loss, SigmoidFocalLoss)
    assert isinstance(criterion.roi.cls_loss, SoftmaxFocalLoss)
    assert cfg.loss.rpn_objectness_prior == pytest.approx(0.01)
    model = hydra.utils.instantiate(cfg.model, num_classes=NUM_CLASSES)
    bias = model.rpn_head.objectness.bias
    assert torch.allclose(bias, torch.full_like(bias, -math.log(99.0)))
    assert cfg.schedule.name == "end_to_end"


def test_default_is_cross_entropy_with_a_zero_objectness_bias(hydra_compose, tmp_path):
    cfg = _train_cfg(hydra_compose, [], tmp_path)
    criterion = hydra.utils.instantiate(cfg.loss.criterion)
    assert type(criterion.rpn.cls_loss) is BinaryCrossEntropy
    assert type(criterion.roi.cls_loss) is CrossEntropy
    model = hydra.utils.instantiate(cfg.model, num_classes=NUM_CLASSES)
    assert torch.count_nonzero(model.rpn_head.objectness.bias) == 0
    assert cfg.name == "ce_end_to_end"


@pytest.mark.parametrize("dataset", ["shapes", "coco", "voc"])
def test_sampled_rpn_box_weight_keeps_the_papers_balance(dataset, hydra_compose, tmp_path):
    """With sampled anchors the RPN box weight is lambda * N_cls / N_reg = 10 * 256 / (anchor
    locations of a full-size image): ~1 at 600 x 1000, 40 on the 8 x 8 map of a 128 px image."""
    cfg = _train_cfg(hydra_compose, ["experiment=ce", f"dataset={dataset}"], tmp_path)
    criterion = hydra.utils.instantiate(cfg.loss.criterion)
    stride = 16  # every backbone of configs/model
    locations = (cfg.dataset.min_size / stride) * (cfg.dataset.max_size / stride)
    expected = 10 * criterion.rpn.num_samples / locations
    assert criterion.weights["loss_rpn_box"] == pytest.approx(expected, rel=0.1)
    focal = hydra.utils.instantiate(_train_cfg(
        hydra_compose, ["experiment=focal", f"dataset={dataset}"], tmp_path).loss.criterion)
    # loss=focal samples the RPN's anchors as CE does, so it keeps CE's box weight
    assert focal.rpn.num_samples == criterion.rpn.num_samples == 256
    assert focal.rpn.positive_fraction == criterion.rpn.positive_fraction == 0.5
    assert focal.weights["loss_rpn_box"] == criterion.weights["loss_rpn_box"]
    dense = hydra.utils.instantiate(_train_cfg(
        hydra_compose, ["experiment=focal", "loss=focal_sampling_free", f"dataset={dataset}"],
        tmp_path).loss.criterion)
    assert dense.rpn.num_samples is None and dense.weights["loss_rpn_box"] == 1.0


def test_sampling_free_focal_differs_from_focal_only_in_the_rpns_sampling(hydra_compose,
                                                                         tmp_path):
    focal = OmegaConf.to_container(_train_cfg(hydra_compose, ["experiment=focal"], tmp_path).loss)
    dense = OmegaConf.to_container(_train_cfg(
        hydra_compose, ["experiment=focal", "loss=focal_sampling_free"], tmp_path).loss)
    assert dense.pop("name") == "focal_sampling_free" and focal.pop("name") == "focal"
    assert dense["criterion"].pop("rpn_num_samples") is None
    assert focal["criterion"].pop("rpn_num_samples") == 256
    assert dense["criterion"]["weights"].pop("loss_rpn_box") == 1.0
    assert focal["criterion"]["weights"].pop("loss_rpn_box") == "${dataset.rpn_box_weight}"
    assert dense == focal  # the same focal terms, prior and weights otherwise


def test_focal_dense_drops_roi_sampling(hydra_compose, tmp_path):
    cfg = _train_cfg(hydra_compose, ["experiment=focal_dense"], tmp_path)
    model = hydra.utils.instantiate(cfg.model, num_classes=NUM_CLASSES)
    criterion = hydra.utils.instantiate(cfg.loss.criterion)
    assert model.roi_sampler.num_samples is None
    assert criterion.rpn.num_samples is None
    assert criterion.roi.normalize_by_positives


def test_two_stage_experiment_gives_the_four_steps(hydra_compose, tmp_path):
    cfg = _train_cfg(hydra_compose, ["experiment=two_stage", "schedule.rpn_iterations=7"],
                     tmp_path)
    phases = hydra.utils.instantiate(cfg.schedule.phases)
    assert [p.name for p in phases] == ["rpn", "fast_rcnn", "rpn_finetune", "fast_rcnn_finetune"]
    assert phases[0].iterations == 7
    assert cfg.name == "ce_two_stage"


def test_end_to_end_iterations_override(hydra_compose, tmp_path):
    cfg = _train_cfg(hydra_compose, ["schedule.iterations=3"], tmp_path)
    (phase,) = hydra.utils.instantiate(cfg.schedule.phases)
    assert phase.iterations == 3


# ---------------------------------------------------------------------------- datasets
def _check_datasets(cfg) -> tuple[DetectionDataset, DetectionDataset]:
    train = hydra.utils.instantiate(cfg.dataset.train)
    val = hydra.utils.instantiate(cfg.dataset.val)
    assert len(train) > 0 and len(val) > 0
    assert list(train.class_names) == list(val.class_names)
    return train, val


def test_shapes_dataset_instantiates(hydra_compose, shapes_overrides, tmp_path):
    train, val = _check_datasets(_train_cfg(hydra_compose, shapes_overrides, tmp_path))
    assert (len(train), len(val)) == (8, 4)
    assert list(train.class_names) == ["rectangle", "ellipse", "triangle", "star"]


def test_coco_dataset_instantiates(hydra_compose, coco_tiny_root, tmp_path):
    cfg = _train_cfg(hydra_compose, ["dataset=coco", f"dataset.root={coco_tiny_root}",
                                     "dataset.train_split=val2017"], tmp_path)
    train, val = _check_datasets(cfg)
    assert train.coco.getImgIds() == val.coco.getImgIds()
    # COCO's category ids are not contiguous: the label maps keep the original ones
    assert sorted(train.label_to_cat_id) == list(range(1, len(train.class_names) + 1))
    assert set(train.label_to_cat_id.values()) == set(train.coco.getCatIds())


def test_voc_dataset_instantiates_with_the_raccoon_layout(hydra_compose, raccoon_root, tmp_path):
    cfg = _train_cfg(hydra_compose, [
        "dataset=voc", f"dataset.root={raccoon_root}", "dataset.ann_dir=annotations",
        "dataset.image_dir=images", "dataset.train_split_file=data/train_labels.csv",
        "dataset.val_split_file=data/test_labels.csv"], tmp_path)
    train, val = _check_datasets(cfg)
    assert list(train.class_names) == ["raccoon"]
    assert not set(train.image_ids) & set(val.image_ids)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_datasets_instantiate(experiment, hydra_compose, shapes_overrides, request,
                                         tmp_path):
    name = hydra_compose("train", [f"experiment={experiment}"]).dataset.name
    if name == "shapes":
        overrides = shapes_overrides
    else:  # real data: the shared copies (skipped when absent)
        fixture = {"coco": "coco_tiny_root", "voc": "raccoon_root"}[name]
        overrides = [f"dataset.root={request.getfixturevalue(fixture)}"]
    cfg = _train_cfg(hydra_compose, [f"experiment={experiment}", *overrides], tmp_path)
    _check_datasets(cfg)


# ---------------------------------------------------------------------------- eval.yaml
def test_eval_config_composes(hydra_compose):
    cfg = hydra_compose("eval")
    assert cfg.checkpoint is None
    assert cfg.get("dataset") is None  # the run's own dataset unless one is given
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert {"outputs_root", "split", "device", "precision", "batch_size"} <= resolved.keys()


def test_eval_config_takes_another_dataset(hydra_compose, tmp_path):
    cfg = hydra_compose("eval", ["dataset=coco", f"dataset.root={tmp_path}",
                                 "checkpoint=run/checkpoints/final.pth"])
    assert cfg.dataset.val.root == str(tmp_path)
    assert cfg.dataset.val._target_ == "detector.data.CocoDetection"
    assert cfg.checkpoint == "run/checkpoints/final.pth"


# ---------------------------------------------------------------------------- config_checks
@pytest.mark.parametrize(("override", "message"), [
    ("batch_size=0", "batch_size must be a positive integer"),
    ("train.log_period=-1", "train.log_period must be a positive integer"),
    ("precision=fp8", "precision must be auto, fp32, bf16 or fp16"),
    ("num_workers=-1", "num_workers must be >= 0"),
    ("optimizer.lr=0", "optimizer.lr must be positive"),
    ("train.clip_grad_norm=0", "train.clip_grad_norm must be positive"),
    ("schedule.iterations=0", "schedule.iterations must be a positive integer"),
    ("device=tpu", "device must be auto, cpu, cuda or cuda:N"),
    ("device=cuda:x", "device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
])
def test_bad_training_values_are_one_line_config_errors(override, message, hydra_compose,
                                                        shapes_overrides, tmp_path):
    """A ConfigError, or for device and precision the OptionError of the library's own rule
    (detector.runtime), which the checks call before anything is read."""
    cfg = _train_cfg(hydra_compose, [*shapes_overrides, override], tmp_path)
    with pytest.raises((config_checks.ConfigError, OptionError), match=message) as info:
        config_checks.check_train_config(cfg)
    assert "\n" not in str(info.value)


def test_two_stage_iterations_are_checked(hydra_compose, shapes_overrides, tmp_path):
    cfg = _train_cfg(hydra_compose, [*shapes_overrides, "experiment=two_stage",
                                     "schedule.rpn_finetune_iterations=0"], tmp_path)
    with pytest.raises(config_checks.ConfigError, match="schedule.rpn_finetune_iterations"):
        config_checks.check_train_config(cfg)


@pytest.mark.parametrize(("override", "message"), [
    ("schedule.step2_backbone=imagenet",
     "schedule.step2_backbone must be one of ('initial', 'rpn'), got 'imagenet'"),
    ("schedule.step2_losses=rpn", "schedule.step2_losses must be one of ('roi', 'all'), got 'rpn'"),
    ("train.on_nonfinite=ignore", "train.on_nonfinite must be 'stop' or 'skip', got 'ignore'"),
    ("train.channels_last=1", "train.channels_last must be true, false or auto, got 1"),
    ("train.divergence_factor=0.5", "train.divergence_factor must be a number > 1 (or None: "
                                    "off), got 0.5"),
    ("train.divergence_factor=abc", "train.divergence_factor must be a number > 1"),
])
def test_values_the_trainer_parts_hold_are_named_by_their_key(override, message, hydra_compose,
                                                              shapes_overrides, tmp_path):
    """Not repeated in detector_cli.checks: the constructors (four_step, StepOptions,
    DivergenceGuard) refuse them, and build_options names the config key (one line)."""
    cfg = _train_cfg(hydra_compose, [*shapes_overrides, "experiment=two_stage", override],
                     tmp_path)
    config_checks.check_train_config(cfg)  # not the checks' rule
    with pytest.raises(config_checks.ConfigError) as info:
        build_options(cfg, torch.device("cpu"))
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error(hydra_compose, shapes_overrides, tmp_path):
    cfg = _train_cfg(hydra_compose, [*shapes_overrides, "device=cuda"], tmp_path)
    with pytest.raises(OptionError, match="CUDA is not available"):
        config_checks.check_train_config(cfg)


def test_missing_dataset_root_is_a_config_error(hydra_compose, tmp_path):
    cfg = _train_cfg(hydra_compose, ["dataset=coco", f"dataset.root={tmp_path / 'nowhere'}"],
                     tmp_path)
    with pytest.raises(config_checks.ConfigError, match="nowhere does not exist"):
        config_checks.check_train_config(cfg)


def test_good_training_config_passes(hydra_compose, shapes_overrides, tmp_path):
    for overrides in ([], ["experiment=two_stage"], ["experiment=two_stage_scratch"],
                      ["experiment=focal", "device=cpu"]):
        cfg = _train_cfg(hydra_compose, [*shapes_overrides, *overrides], tmp_path)
        config_checks.check_train_config(cfg)
        build_options(cfg, torch.device("cpu"))


@pytest.mark.parametrize(("override", "message"), [
    ("batch_size=0", "batch_size must be a positive integer"),
    ("precision=fp8", "precision must be auto, fp32, bf16 or fp16"),
    ("split=test", "split must be train or val"),
])
def test_bad_eval_values_are_config_errors(override, message, hydra_compose):
    cfg = hydra_compose("eval", [override])
    with pytest.raises((config_checks.ConfigError, OptionError), match=message):
        config_checks.check_eval_config(cfg)
    config_checks.check_eval_config(hydra_compose("eval", ["device=cpu"]))
