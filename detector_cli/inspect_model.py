"""Inside a trained model, from a composed configs/inspect.yaml (``tools/inspect_model.py``).

``run(cfg)`` checks the config, reads ``cfg.checkpoint`` (or the newest ``final.pth``) and
``cfg.checkpoint_b`` if given, gathers each one's weight, BN and (on ``cfg.num_images`` images
of the run's own split) activation statistics (``detector.inspection``), writes report.md and
the figures into ``cfg.output_dir`` (or beside checkpoint A), prints the per-block summary and
returns the report's path.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from detector.checkpoint import CheckpointError
from detector.data import build_dataloader
from detector.inspection import activation_stats
from detector.inspection.report import (
    Thresholds,
    inspect_state,
    legend,
    summary_table,
    write_report,
)
from detector.modeling.spec import (
    dataset_from_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
)
from detector.runtime import resolve_device
from detector.untrusted import path_component, shown
from detector_cli.checks import ConfigError, check_checkpoint_dataset, check_inspect_config
from detector_cli.cli import resolve_checkpoint

__all__ = ["inspect_checkpoint", "labels_of", "load", "report_folder", "run",
           "validation_images"]

log = logging.getLogger("inspect")


def validation_images(path: Path, state: dict, split: str, count: int):
    """The first ``count`` images of the run's split, one per batch (no padding), normalised as
    in evaluation; the dataset is built only through the project's dataset constructors."""
    run_dataset = state["config"].get("dataset", {})
    check_checkpoint_dataset(run_dataset.get("name"), run_dataset.get(split))
    dataset = dataset_from_checkpoint(state, split=split, source=path)
    loader = build_dataloader(dataset=dataset, batch_size=1, train=False)
    return [batch["images"] for batch in itertools.islice(loader, count)]


def load(path: Path) -> dict:
    state = read_checkpoint(path)  # refused unless the project's constructors and plain data
    if "model" not in state:
        raise CheckpointError(f"{path} holds no 'model' (not a train_net.py checkpoint)")
    model = state["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                              for k, v in model.items()):
        raise CheckpointError(f"{path}: its 'model' is not a state dict (names -> tensors)")
    return state


def inspect_checkpoint(path: Path, state: dict, label: str, cfg: DictConfig, device: torch.device,
                       thresholds: Thresholds):
    inspection = inspect_state(state["model"], label=label, source=str(path), thresholds=thresholds)
    if cfg.num_images:
        model = model_from_checkpoint(state, source=path).to(device)
        images = validation_images(path, state, cfg.split, cfg.num_images)
        inspection.activations = activation_stats(
            model.backbone, (image.to(device) for image in images), prefix="backbone.")
        inspection.images = len(images)
    return inspection


def labels_of(paths: list[Path], states: list[dict]) -> list[str]:
    """Each run's config ``name`` (e.g. focal_end_to_end), prefixed A-/B- when they coincide;
    escaped and cut to 64 characters (a name from a file reaches the terminal and the report)."""
    names = [shown(state["config"].get("name") or path.stem, limit=64) for path, state in zip(
        paths, states, strict=True)]
    if len(set(names)) < len(names):
        names = [f"{tag}-{name}" for tag, name in zip("AB", names, strict=False)]
    return names


def report_folder(output_dir: str | None, paths: list[Path], labels: list[str]) -> Path:
    """``output_dir`` if given, else ``<stem>_inspect[_vs_<label B>]`` beside checkpoint A: the
    label (from checkpoint B) only as one harmless path component, never a path (``/../..``).

    Raises:
        ConfigError: the default folder is a symbolic link or a file (a copied run folder's).
    """
    if output_dir:
        return Path(output_dir)
    suffix = f"_vs_{path_component(labels[1], fallback='B')}" if len(labels) > 1 else ""
    out = paths[0].parent / f"{paths[0].stem}_inspect{suffix}"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{shown(out)} is a symbolic link or a file, not a report folder; "
                          f"pass output_dir=DIR")
    return out


def run(cfg: DictConfig) -> Path:
    check_inspect_config(cfg)
    paths = [resolve_checkpoint(cfg)] + ([Path(cfg.checkpoint_b)] if cfg.checkpoint_b else [])
    states = [load(path) for path in paths]
    labels = labels_of(paths, states)
    thresholds = Thresholds(abs=cfg.abs_threshold, rel=cfg.rel_threshold, gamma=cfg.gamma_threshold)
    device = resolve_device(cfg.device)
    runs = []
    for path, state, label in zip(paths, states, labels, strict=True):
        log.info("inspecting %s (%s) on %s", shown(path, limit=None), label, device)
        runs.append(inspect_checkpoint(path, state, label, cfg, device, thresholds))
    out_dir = report_folder(cfg.output_dir, paths, labels)
    report = write_report(runs, out_dir, thresholds=thresholds)
    print(summary_table(runs))
    if len(runs) > 1:
        print(legend(runs))
    log.info("report and figures: %s (%s)", shown(out_dir, limit=None), report.name)
    return report
