"""COCO mAP and/or Pascal VOC mAP from a composed configs/eval.yaml (``tools/eval.py``).

``run(cfg)`` checks the config, loads the checkpoint (``cfg.checkpoint``, or the newest
``final.pth`` under ``cfg.outputs_root``), evaluates it on the split ``cfg.split`` of the dataset
the user composed or else the checkpoint's own, writes <name>_<split>_metrics.json,
<name>_<split>_results.json and <name>_<split>_detections/ beside the checkpoint (on a dataset
other than the run's own: <name>_eval_<dataset>_<root folder>_<split>_*, see ``output_stem``,
so the run's own final_val_* files stay), prints the
tables of the metrics ``cfg.metric`` names (``coco``, ``voc07``, ``voc``; one or a list) and
returns the metrics. With ``cfg.results`` (a COCO results file) no model is run: the file is
scored against the split of ``dataset=`` and <results stem>_metrics.json is written beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from detector.data import build_dataloader, read_image_rgb
from detector.evaluation import (
    detections_to_coco_results,
    evaluate_coco,
    evaluate_voc,
    format_coco_table,
    format_per_class_table,
    format_voc_table,
    read_results_file,
    save_metrics,
    save_results,
)
from detector.evaluation.inference import predict, score_detections
from detector.evaluation.proposal_recall import format_proposal_recall_table, proposal_recall
from detector.modeling.spec import (
    dataset_from_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
)
from detector.modeling.tta import forward_with_flip
from detector.ops.boxes import xywh_to_xyxy
from detector.runtime import resolve_device, resolve_precision
from detector.untrusted import path_component
from detector.visualize import draw_detections, save_image
from detector_cli.checks import (
    ConfigError,
    check_checkpoint_dataset,
    check_dataset,
    check_eval_config,
    check_eval_metric,
)
from detector_cli.cli import counted, resolve_checkpoint

__all__ = ["build_dataset", "build_model", "output_stem", "run", "score_results", "visualize"]

log = logging.getLogger("eval")


def build_model(path: Path, state: dict, device: torch.device, cfg: DictConfig | None = None):
    """The checkpoint's model, through the one checked route (``detector.modeling.spec``), with
    ``cfg.nms`` / ``cfg.soft_nms_sigma`` / ``cfg.score_threshold`` replacing its
    post-processing's and ``cfg.proposals`` the RPN's proposals kept at test time (after its NMS;
    the pre-NMS top-n raised to at least as many) where given."""
    model = model_from_checkpoint(state, source=path)
    post = model.postprocessor
    cfg = cfg if cfg is not None else {}
    if cfg.get("nms") is not None:  # checked by check_eval_config
        post.nms = cfg.nms
    if cfg.get("soft_nms_sigma") is not None:
        post.soft_nms_sigma = float(cfg.soft_nms_sigma)
    if cfg.get("score_threshold") is not None:  # checked by check_eval_config
        post.score_threshold = float(cfg.score_threshold)
    if cfg.get("proposals") is not None:  # checked by check_eval_config
        rpn = model.proposal_generator
        n = int(cfg.get("proposals"))
        rpn.post_nms_top_n = (rpn.post_nms_top_n[0], n)
        rpn.pre_nms_top_n = (rpn.pre_nms_top_n[0], max(rpn.pre_nms_top_n[1], n))
    # channels-last weights, as in training (train.channels_last, the default): NHWC convolutions
    return model.to(device, memory_format=torch.channels_last).eval()


def build_dataset(cfg: DictConfig, path: Path, state: dict):
    """(dataset, name): the ``dataset=`` the user composed on the command line (Hydra), or else
    the checkpoint's own, built only through the project's dataset constructors. Either way with
    the evaluation transforms of its val split (never augmented)."""
    if cfg.get("dataset") is None:
        run_dataset = state["config"].get("dataset", {})
        check_checkpoint_dataset(run_dataset.get("name"), run_dataset.get(cfg.split))
        dataset = dataset_from_checkpoint(state, split=cfg.split, source=path)
        return dataset, run_dataset.get("name")
    check_dataset(OmegaConf.create({"dataset": cfg.dataset}))
    dataset = hydra.utils.instantiate(cfg.dataset[cfg.split])
    dataset.transforms = hydra.utils.instantiate(cfg.dataset.val.transforms)
    return dataset, cfg.dataset.name


def _described(dataset: object, split: str) -> tuple | None:
    """(name, the split's description without its transforms) of a dataset config."""
    if not isinstance(dataset, Mapping) or not isinstance(dataset.get(split), Mapping):
        return None
    spec = {key: value for key, value in dataset[split].items() if key != "transforms"}
    return dataset.get("name"), spec


def output_stem(cfg: DictConfig, path: Path, state: dict) -> str:
    """How the outputs beside the checkpoint ``path`` are named: ``<checkpoint>_<split>`` (e.g.
    the run's own ``final_val_*``) for the run's own dataset (no ``dataset=``, or one whose name
    and split description (root, split, split/annotation files, folders) equal the checkpoint's),
    else ``<checkpoint>_eval_<dataset>_<root folder>_<split>``: evaluating on another dataset
    never overwrites the run's own files."""
    if cfg.get("dataset") is None:
        return f"{path.stem}_{cfg.split}"
    composed = OmegaConf.to_container(cfg.dataset, resolve=True)
    if _described(composed, cfg.split) == _described(state["config"].get("dataset"), cfg.split):
        return f"{path.stem}_{cfg.split}"
    name = path_component(composed.get("name"), fallback="dataset")
    root = path_component(Path(str(composed.get("root", ""))).resolve().name, fallback="root")
    return f"{path.stem}_eval_{name}_{root}_{cfg.split}"


def visualize(dataset, detections: list[dict], out_dir: Path, count: int, threshold: float):
    out_dir.mkdir(parents=True, exist_ok=True)
    for det in detections[:count]:
        info = dataset.coco.imgs[det["image_id"]]
        image = read_image_rgb(Path(dataset.image_dir) / info["file_name"])
        gt = [a["bbox"] for a in dataset.coco.imgToAnns[det["image_id"]]]
        gt_xyxy = xywh_to_xyxy(torch.tensor(gt, dtype=torch.float32).reshape(-1, 4))
        drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"],
                                class_names=dataset.class_names, min_score=threshold,
                                gt_boxes=gt_xyxy)
        save_image(out_dir / f"{det['image_id']}.png", drawn)


def _voc_metrics(dataset, results: list[dict], names: list[str], img_ids: list[int]) -> dict:
    metrics: dict = {}
    for name in names:
        if name != "coco":
            metrics.update(evaluate_voc(dataset.coco, results, metric=name, img_ids=img_ids))
    return metrics


def _proposal_recall(dataset, proposals: dict, model) -> dict:
    """Recall of the RPN's proposals per class and size, at the model's test-time proposal count
    and at 100 (fewer when the model keeps fewer)."""
    kept = int(model.proposal_generator.post_nms_top_n[1])
    limits = sorted({min(100, kept), kept})
    cat_id_to_name = {cat_id: dataset.class_names[label - 1]
                      for label, cat_id in dataset.label_to_cat_id.items()}
    return proposal_recall(dataset.coco, proposals, cat_id_to_name=cat_id_to_name, limits=limits)


def _print_tables(metrics: dict, names: list[str]) -> None:
    for name in names:
        if name == "coco":
            print(format_coco_table(metrics))
            print(format_per_class_table(metrics))
        else:
            print(format_voc_table(metrics, name))


def _summary(metrics: dict) -> str:
    shown = [f"{key} {metrics[key]:.4f}" for key in ("AP", "AP50", "VOC07", "VOC")
             if metrics.get(key) is not None]
    return "  ".join(shown) or "no metric defined"


def score_results(cfg: DictConfig, names: list[str]) -> dict:
    """Score the COCO results file ``cfg.results`` against the split of ``dataset=``: no model.
    Writes <results stem>_metrics.json beside the file and returns the metrics."""
    if cfg.get("dataset") is None:
        raise ConfigError("results= needs dataset=... (the ground truth to score it against)")
    check_dataset(OmegaConf.create({"dataset": cfg.dataset}))
    dataset = hydra.utils.instantiate(cfg.dataset[cfg.split])
    path = Path(cfg.results)
    results = read_results_file(path, dataset.coco)
    img_ids = dataset.image_ids
    log.info("scoring %s (%s) on %s (%s split, %s)", path, counted(len(results), "detection"),
             cfg.dataset.name, cfg.split, counted(len(img_ids), "image"))
    metrics = evaluate_coco(dataset.coco, results, img_ids=img_ids) if "coco" in names else {}
    metrics.update(_voc_metrics(dataset, results, names, img_ids))
    save_metrics(path.with_name(f"{path.stem}_metrics.json"), metrics)
    _print_tables(metrics, names)
    log.info("%s  (metrics beside %s)", _summary(metrics), path)
    return metrics


def run(cfg: DictConfig) -> dict:
    check_eval_config(cfg)
    names = check_eval_metric(cfg.get("metric", "coco"))
    if cfg.get("results") is not None:
        return score_results(cfg, names)
    path = resolve_checkpoint(cfg)
    state = read_checkpoint(path)  # refused unless the project's constructors and plain data
    dataset, name = build_dataset(cfg, path, state)
    if list(dataset.class_names) != list(state["class_names"]):
        raise ConfigError(f"the checkpoint's classes {state['class_names']} differ from the "
                          f"dataset's {dataset.class_names}")
    device = resolve_device(cfg.device)
    log.info("evaluating %s on %s (%s split, %s) on %s", path, name, cfg.split,
             counted(len(dataset), "image"), device)
    model = build_model(path, state, device, cfg)
    loader = build_dataloader(dataset=dataset, batch_size=cfg.batch_size, train=False,
                              num_workers=cfg.num_workers)
    tta = bool(cfg.get("tta", False))
    keep_proposals = bool(cfg.get("proposal_recall", True)) and not tta
    detections = predict(model, loader, device=device,
                         precision=resolve_precision(cfg.precision, device),
                         forward=forward_with_flip if tta else None,
                         keep_proposals=keep_proposals)
    proposals = {d["image_id"]: d.pop("proposals") for d in detections if "proposals" in d}
    results = detections_to_coco_results(detections, label_to_cat_id=dataset.label_to_cat_id)
    metrics = score_detections(dataset, detections) if "coco" in names else {}
    if keep_proposals:
        metrics["proposal_recall"] = _proposal_recall(dataset, proposals, model)
    metrics.update(_voc_metrics(dataset, results, names,
                                sorted({d["image_id"] for d in detections})))
    stem = (output_stem(cfg, path, state) + (f"_{cfg.nms}" if cfg.get("nms") else "")
            + (f"_proposals{cfg.proposals}" if cfg.get("proposals") is not None else "")
            + (f"_score{cfg.score_threshold:g}" if cfg.get("score_threshold") is not None else "")
            + ("_tta" if cfg.get("tta", False) else ""))
    save_metrics(path.parent / f"{stem}_metrics.json", metrics)
    save_results(path.parent / f"{stem}_results.json", results)
    visualize(dataset, detections, path.parent / f"{stem}_detections", cfg.num_visualize,
              cfg.min_score_visualize)
    _print_tables(metrics, names)
    if "proposal_recall" in metrics:
        print(format_proposal_recall_table(metrics["proposal_recall"]))
    log.info("%s  (%s_metrics.json, results and drawings beside %s)", _summary(metrics), stem,
             path)
    return metrics
