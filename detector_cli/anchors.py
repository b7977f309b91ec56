"""``dataset.anchor_sizes`` / ``dataset.anchor_ratios`` at the start of training.

``settle_anchors(cfg, train_set)`` runs in ``build_trainer`` between the datasets and the model:
an ``auto`` value is replaced by anchors fitted to the training boxes
(``detector.data.anchor_choice``), so the model, the checkpoints' config and config.json hold
numbers; with numbers it logs their coverage (and a hint when it is low). A resumed ``auto`` run
takes the numbers its checkpoint was trained with (the data may have changed since).
"""

from __future__ import annotations

import logging

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from detector.checkpoint import load_checkpoint
from detector.data.anchor_choice import (
    choose_anchors,
    configured_coverage,
    format_coverage,
    is_auto,
)
from detector.engine import distributed as dist
from detector_cli.checks import resume_checkpoint
from detector_cli.cli import config_keys

__all__ = ["ANCHOR_KEYS", "LIBRARY_DEFAULTS", "anchor_baseline", "settle_anchors"]

log = logging.getLogger("train_net")
SIZES, RATIOS = "dataset.anchor_sizes", "dataset.anchor_ratios"
ANCHOR_KEYS = (SIZES, RATIOS)
LIBRARY_DEFAULTS = {SIZES: [128.0, 256.0, 512.0], RATIOS: [0.5, 1.0, 2.0]}  # AnchorGenerator's
LOW_COVERAGE = 0.95


def _grid(cfg: DictConfig) -> dict:
    return dict(min_size=int(cfg.dataset.min_size), max_size=int(cfg.dataset.max_size),
                stride=float(OmegaConf.select(cfg, "model.backbone.output_stride", default=16)),
                offset=float(OmegaConf.select(cfg, "model.anchor_offset", default=0.0)))


def settle_anchors(cfg: DictConfig, train_set) -> None:
    """Fill in ``auto`` anchor values of ``cfg`` (in place), or log the configured ones' coverage."""
    sizes, ratios = (OmegaConf.select(cfg, key) for key in ANCHOR_KEYS)
    if not (is_auto(sizes) or is_auto(ratios)):
        coverage, boxes = configured_coverage(train_set, sizes=list(sizes), ratios=list(ratios),
                                              **_grid(cfg))
        log.info("anchor coverage of the %d training boxes: %s", boxes, format_coverage(coverage))
        if boxes and coverage[0.5] < LOW_COVERAGE:
            log.info("anchor coverage at IoU 0.5 is under %.0f %%: dataset.anchor_sizes=auto "
                     "dataset.anchor_ratios=auto fits the anchors to these boxes",
                     100 * LOW_COVERAGE)
        return
    resumed = _checkpoint_anchors(cfg)
    if resumed is not None:
        log.info("anchors of the resumed run: anchor_sizes=%s anchor_ratios=%s", *resumed)
        _write(cfg, *resumed)
        return
    baseline, source = anchor_baseline(cfg)
    with config_keys("dataset", sizes=SIZES, ratios=RATIOS):
        choice = choose_anchors(train_set, sizes=sizes, ratios=ratios,
                                baseline_sizes=baseline[SIZES], baseline_ratios=baseline[RATIOS],
                                seed=int(cfg.seed), **_grid(cfg))
    choice = dist.broadcast_object(choice)  # deterministic, but one source of truth under torchrun
    log.info("anchors fitted (%s) to %d training boxes in %.1f s: anchor_sizes=%s "
             "anchor_ratios=%s", " and ".join(choice.fitted), choice.num_boxes, choice.seconds,
             choice.sizes, choice.ratios)
    log.info("anchor coverage (IoU >= 0.5): before %.1f %% -> after %.1f %% (IoU >= 0.7: %.1f %% "
             "-> %.1f %%); before: sizes %s x ratios %s (%s)", 100 * choice.before[0.5],
             100 * choice.after[0.5], 100 * choice.before[0.7], 100 * choice.after[0.7],
             choice.baseline_sizes, choice.baseline_ratios, source)
    _write(cfg, choice.sizes, choice.ratios)


def _write(cfg: DictConfig, sizes: list[float], ratios: list[float]) -> None:
    OmegaConf.update(cfg, SIZES, list(sizes), merge=False, force_add=True)
    OmegaConf.update(cfg, RATIOS, list(ratios), merge=False, force_add=True)


def _checkpoint_anchors(cfg: DictConfig) -> tuple[list[float], list[float]] | None:
    """The numbers a resumed run's checkpoint was trained with (None: not resuming, or none)."""
    path = resume_checkpoint(cfg)
    if path is None:
        return None
    dataset = (load_checkpoint(path).get("config") or {}).get("dataset") or {}
    found = [dataset.get(key.split(".")[1]) for key in ANCHOR_KEYS]
    if not all(isinstance(v, list) and v and not is_auto(v) for v in found):
        return None
    return [float(v) for v in found[0]], [float(v) for v in found[1]]


def anchor_baseline(cfg: DictConfig) -> tuple[dict[str, list[float]], str]:
    """The grid an ``auto`` value replaces: the composed config's value without the command
    line's override of that key (the experiment's or the dataset config's), else
    ``AnchorGenerator``'s defaults. Returns ({key: numbers}, where they come from)."""
    values = {key: OmegaConf.select(cfg, key) for key in ANCHOR_KEYS}
    source = "configured"
    if any(is_auto(v) for v in values.values()):
        composed, source = _compose_without_anchor_overrides()
        for key, value in values.items():
            if is_auto(value):
                found = OmegaConf.select(composed, key) if composed is not None else None
                if found is None or is_auto(found):
                    found, source = LIBRARY_DEFAULTS[key], "the library default"
                values[key] = found
    return {key: [float(v) for v in value] for key, value in values.items()}, source


def _compose_without_anchor_overrides() -> tuple[DictConfig | None, str]:
    if not (HydraConfig.initialized() and GlobalHydra.instance().is_initialized()):
        return None, "the library default"
    hc = HydraConfig.get()
    kept = [o for o in hc.overrides.task
            if o.lstrip("+~").split("=", 1)[0] not in ANCHOR_KEYS]
    try:
        composed = hydra.compose(config_name=hc.job.config_name, overrides=kept)
    except (HydraException, OmegaConfBaseException, ValueError):
        return None, "the library default"
    return composed, "the config without this command line's anchor overrides"
