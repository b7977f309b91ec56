"""Inside a trained model: python tools/inspect_model.py [checkpoint=A] [checkpoint_b=B]

Per layer (conv, BN, linear): count, mean |w|, std, near-zero fractions (absolute and relative
thresholds); BN gammas and the prunable channels; activation statistics after every backbone ReLU
on ``num_images`` images of the run's own validation set (mean, std, zeros, dead channels). With
checkpoint_b the two runs are side by side. Writes report.md + PNGs (one weight-histogram grid per
block) into one folder, prints the per-block summary table and the folder.
"""

from __future__ import annotations

import itertools
import logging
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli import check_command_line, exit_on_user_error, resolve_checkpoint  # noqa: E402
from config_checks import ConfigError, check_checkpoint_dataset, check_device  # noqa: E402

from detector.checkpoint import CheckpointError  # noqa: E402
from detector.data import build_dataloader  # noqa: E402
from detector.inspection import activation_stats  # noqa: E402
from detector.inspection.report import (  # noqa: E402
    Thresholds,
    inspect_state,
    legend,
    summary_table,
    write_report,
)
from detector.modeling.spec import (  # noqa: E402
    dataset_from_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
)
from detector.runtime import resolve_device  # noqa: E402
from detector.untrusted import path_component, shown  # noqa: E402

log = logging.getLogger("inspect")


def check_inspect_config(cfg: DictConfig) -> None:
    if not isinstance(cfg.num_images, int) or cfg.num_images < 0:
        raise ConfigError(f"num_images must be an integer >= 0, got {cfg.num_images!r}")
    for key in ("abs_threshold", "rel_threshold", "gamma_threshold"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
            raise ConfigError(f"{key} must be a number >= 0, got {cfg[key]!r}")
    if cfg.split not in ("train", "val"):
        raise ConfigError(f"split must be train or val, got {cfg.split!r}")
    check_device(cfg.device)


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


@hydra.main(config_path="../configs", config_name="inspect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run(cfg)


if __name__ == "__main__":
    check_command_line("inspect")  # a typo'd key: one line, exit code 2
    main()
