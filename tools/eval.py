"""COCO mAP of a trained checkpoint: python tools/eval.py [checkpoint=PATH] [dataset=... ...]

With no arguments: the newest outputs/**/checkpoints/final.pth, on its own run's val split.
Prints the 12-number COCO table and per-class AP; writes, beside the checkpoint,
<name>_<split>_metrics.json (with "pr_iou50": precision at 101 recall points per class at IoU
0.5), <name>_<split>_results.json (COCO results: original category ids,
xywh) and <name>_<split>_detections/*.png (val images with their detections drawn).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# Transparent huge pages for PyTorch's CPU allocator (read when torch loads): far fewer page faults
# on large temporaries (tools/bench_ops.py: 24 instead of 35 ms). An exported value wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli import check_command_line, exit_on_user_error, resolve_checkpoint  # noqa: E402
from config_checks import (  # noqa: E402
    ConfigError,
    check_checkpoint_dataset,
    check_dataset,
    check_eval_config,
)

from detector.data import build_dataloader, read_image_rgb  # noqa: E402
from detector.evaluation import (  # noqa: E402
    detections_to_coco_results,
    format_coco_table,
    format_per_class_table,
    save_metrics,
    save_results,
)
from detector.evaluation.inference import evaluate  # noqa: E402
from detector.modeling.spec import (  # noqa: E402
    dataset_from_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
)
from detector.runtime import resolve_device, resolve_precision  # noqa: E402
from detector.visualize import draw_detections, save_image  # noqa: E402

log = logging.getLogger("eval")


def build_model(path: Path, state: dict, device: torch.device):
    """The checkpoint's model, through the one checked route (``detector.modeling.spec``)."""
    model = model_from_checkpoint(state, source=path)
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


def visualize(dataset, detections: list[dict], out_dir: Path, count: int, threshold: float):
    out_dir.mkdir(parents=True, exist_ok=True)
    for det in detections[:count]:
        info = dataset.coco.imgs[det["image_id"]]
        image = read_image_rgb(Path(dataset.image_dir) / info["file_name"])
        gt = [a["bbox"] for a in dataset.coco.imgToAnns[det["image_id"]]]
        gt_xyxy = torch.tensor(gt, dtype=torch.float32).reshape(-1, 4)
        gt_xyxy[:, 2:] += gt_xyxy[:, :2]
        drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"],
                                class_names=dataset.class_names, score_threshold=threshold,
                                gt_boxes=gt_xyxy)
        save_image(out_dir / f"{det['image_id']}.png", drawn)


def run(cfg: DictConfig) -> dict:
    check_eval_config(cfg)
    path = resolve_checkpoint(cfg)
    state = read_checkpoint(path)  # refused unless the project's constructors and plain data
    dataset, name = build_dataset(cfg, path, state)
    if list(dataset.class_names) != list(state["class_names"]):
        raise ConfigError(f"the checkpoint's classes {state['class_names']} differ from the "
                          f"dataset's {dataset.class_names}")
    device = resolve_device(cfg.device)
    log.info("evaluating %s on %s (%s split, %d images) on %s", path, name, cfg.split,
             len(dataset), device)
    model = build_model(path, state, device)
    loader = build_dataloader(dataset=dataset, batch_size=cfg.batch_size, train=False,
                              num_workers=cfg.num_workers)
    metrics, detections = evaluate(model, loader, device=device,
                                   precision=resolve_precision(cfg.precision, device))
    stem = f"{path.stem}_{cfg.split}"
    save_metrics(path.parent / f"{stem}_metrics.json", metrics)
    save_results(path.parent / f"{stem}_results.json",
                 detections_to_coco_results(detections, label_to_cat_id=dataset.label_to_cat_id))
    visualize(dataset, detections, path.parent / f"{stem}_detections", cfg.num_visualize,
              cfg.score_threshold_visualize)
    print(format_coco_table(metrics))
    print(format_per_class_table(metrics))
    log.info("AP %.4f  AP50 %.4f  (metrics, results and drawings beside %s)",
             metrics["AP"] or 0.0, metrics["AP50"] or 0.0, path)
    return metrics


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():  # one line on stderr, exit code 2 (HYDRA_FULL_ERROR=1: trace)
        run(cfg)


if __name__ == "__main__":
    check_command_line("eval")
    main()
