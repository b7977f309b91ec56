"""Look at the data before training, from a composed configs/inspect_data.yaml
(``tools/inspect_data.py``; the same groups and keys as configs/train.yaml).

``run(cfg)`` checks the config, builds the split's dataset exactly as training does
(``cfg.dataset[cfg.split]``, its transforms included), measures it at model-input scale with the
anchors of ``cfg.model`` (``detector.inspection.data_stats``), writes contact_sheet.png,
boxes.png and report.md into ``output_dir`` (default ``outputs/inspect_data/<dataset>_<split>/``),
prints the summary and the folder, and returns the report's path. The model is never built: the
anchors' stride is the backbone's ``output_stride`` (16 when the backbone config has none).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from detector.inspection.data_plots import plot_boxes, write_contact_sheet
from detector.inspection.data_report import summary_lines, write_report
from detector.inspection.data_stats import AUTO, inspect_dataset
from detector.untrusted import path_component, shown
from detector_cli.anchors import RATIOS, SIZES, anchor_baseline
from detector_cli.checks import ConfigError, check_dataset

__all__ = ["anchor_values", "check_inspect_data_config", "dataset_label", "output_folder", "run"]

log = logging.getLogger("inspect_data")
DEFAULT_STRIDE = 16
CONTACT_SHEET, BOXES = "contact_sheet.png", "boxes.png"


def _int(cfg: DictConfig, key: str, *, low: int) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")


def check_inspect_data_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value of tools/inspect_data.py's own keys (and a
    missing dataset root, as training would)."""
    if cfg.split not in ("train", "val"):
        raise ConfigError(f"split must be train or val, got {cfg.split!r}")
    _int(cfg, "num_images", low=0)
    _int(cfg, "seed", low=0)
    for key in ("dataset.min_size", "dataset.max_size"):
        _int(cfg, key, low=1)
    if cfg.output_dir is not None and not isinstance(cfg.output_dir, str):
        raise ConfigError(f"output_dir must be a path or null, got {cfg.output_dir!r}")
    check_dataset(cfg)


def anchor_values(cfg: DictConfig, key: str):
    """``cfg.model.<key>`` (anchor_sizes or anchor_ratios): ``"auto"`` or a list of positive
    numbers (ConfigError naming the key the user sets otherwise)."""
    value = cfg.model[key]
    if value == AUTO:
        return AUTO
    numbers = OmegaConf.to_object(value) if isinstance(value, ListConfig) else value
    if not (isinstance(numbers, list) and numbers and all(
            isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in numbers)):
        raise ConfigError(f"dataset.{key} (model.{key}) must be {AUTO} or a list of positive "
                          f"numbers, got {value!r}")
    return [float(v) for v in numbers]


def dataset_label(cfg: DictConfig) -> str:
    """The dataset's name in the default folder: the last folder of ``dataset.root`` (raccoon,
    coco_tiny, VOC2007), else ``dataset.name``; one harmless path component."""
    root = cfg.dataset.get("root")
    name = Path(str(root)).resolve().name if root else ""
    return path_component(name or cfg.dataset.name, fallback=str(cfg.dataset.name))


def output_folder(cfg: DictConfig) -> Path:
    """``output_dir``, or ``outputs/inspect_data/<dataset>_<split>``."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    return Path("outputs") / "inspect_data" / f"{dataset_label(cfg)}_{cfg.split}"


def run(cfg: DictConfig) -> Path:
    check_inspect_data_config(cfg)
    sizes, ratios = anchor_values(cfg, "anchor_sizes"), anchor_values(cfg, "anchor_ratios")
    stride = int(cfg.model.backbone.get("output_stride", DEFAULT_STRIDE) or DEFAULT_STRIDE)
    dataset = hydra.utils.instantiate(cfg.dataset[cfg.split])
    baseline, _ = anchor_baseline(cfg)  # what an auto value starts from, as in training
    label = dataset_label(cfg)
    inspection, table = inspect_dataset(
        dataset, name=label, split=cfg.split, min_size=cfg.dataset.min_size,
        max_size=cfg.dataset.max_size, sizes=sizes, ratios=ratios, stride=stride,
        offset=float(cfg.model.anchor_offset), seed=cfg.seed,
        baseline_sizes=baseline[SIZES], baseline_ratios=baseline[RATIOS],
        rpn_fg_iou=float(cfg.loss.criterion.rpn_fg_iou),
        rpn_bg_iou=float(cfg.loss.criterion.rpn_bg_iou))
    out = output_folder(cfg)
    figures = []
    if cfg.num_images:
        write_contact_sheet(dataset, out / CONTACT_SHEET, count=cfg.num_images, seed=cfg.seed)
        figures.append(CONTACT_SHEET)
    plot_boxes(out / BOXES, boxes=table.boxes, labels=table.labels,
               class_names=inspection.class_names, anchors=inspection.coverage.anchors,
               fitted=inspection.fitted.anchors if inspection.fitted is not None else None,
               title=f"{label} ({cfg.split} split), model input")
    figures.append(BOXES)
    report = write_report(inspection, out, figures)
    print("\n".join(summary_lines(inspection)), flush=True)
    print(f"report and figures: {shown(out, limit=None)} ({', '.join([report.name, *figures])})",
          flush=True)
    return report
