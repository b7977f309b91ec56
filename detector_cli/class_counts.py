"""``loss.class_balance`` at the start of training (``loss=class_balanced_ce`` /
``class_balanced_focal``).

``settle_class_weights(cfg, train_set)`` runs in ``build_trainer`` between the datasets and the
criterion: ``loss.class_balance.counts: auto`` is replaced by the training split's boxes per
foreground class, and ``loss.class_balance.weights`` (the ROI classifier's per-class ``alpha``,
background first: ``detector.ops.class_balance.class_balanced_alpha``) by the weights of those
counts and ``loss.class_balance.beta``; one INFO line logs both. The numbers then reach the
criterion, config.json and the checkpoints' config, so nothing later needs the data. A resumed
``auto`` run takes the counts its checkpoint was trained with (the data may have changed since).
A config without ``loss.class_balance`` is left as it is.
"""

from __future__ import annotations

import logging
import math

import torch
from omegaconf import DictConfig, OmegaConf

from detector.checkpoint import load_checkpoint
from detector.data.anchor_choice import is_auto
from detector.data.box_stats import model_input_boxes
from detector.ops.class_balance import class_balanced_alpha
from detector_cli.checks import ConfigError, resume_checkpoint

__all__ = ["BETA", "COUNTS", "WEIGHTS", "box_counts", "settle_class_weights"]

log = logging.getLogger("train_net")
SECTION = "loss.class_balance"
BETA, COUNTS, WEIGHTS = f"{SECTION}.beta", f"{SECTION}.counts", f"{SECTION}.weights"


def settle_class_weights(cfg: DictConfig, train_set) -> None:
    """Fill in ``loss.class_balance.counts`` (when ``auto``) and ``.weights`` of ``cfg`` in place."""
    if OmegaConf.select(cfg, SECTION) is None:
        return
    beta = _beta(OmegaConf.select(cfg, BETA))
    names = list(train_set.class_names)
    counts = OmegaConf.select(cfg, COUNTS)
    if is_auto(counts):
        resumed = _checkpoint_counts(cfg)
        if resumed is not None:
            counts, source = _given_counts(resumed, len(names)), "the resumed run's checkpoint"
        else:
            counts = box_counts(train_set, len(names), min_size=int(cfg.dataset.min_size),
                                max_size=int(cfg.dataset.max_size))
            source = f"the {sum(counts)} training boxes"
    else:
        counts, source = _given_counts(counts, len(names)), "the config"
    weights = [round(float(w), 6) for w in class_balanced_alpha(counts, beta)]
    log.info("class-balanced ROI weights (beta %g) from %s: %s; background %g", beta, source,
             ", ".join(f"{name} {n} boxes -> {w:g}" for name, n, w in
                       zip(names, counts, weights[1:], strict=True)), weights[0])
    OmegaConf.update(cfg, COUNTS, list(counts), merge=False, force_add=True)
    OmegaConf.update(cfg, WEIGHTS, weights, merge=False, force_add=True)


def box_counts(dataset, num_classes: int, *, min_size: int, max_size: int) -> list[int]:
    """Boxes per foreground class (labels 1..``num_classes``) in ``dataset.records``."""
    labels = model_input_boxes(dataset, min_size=min_size, max_size=max_size).labels
    labels = labels[(labels >= 1) & (labels <= num_classes)]
    return torch.bincount(labels, minlength=num_classes + 1)[1:].tolist()


def _beta(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{BETA} must be a number in [0, 1] (0: equal weights, 1: inverse "
                          f"frequency), got {value!r}")
    return float(value)


def _given_counts(value, num_classes: int) -> list[int]:
    values = list(value) if OmegaConf.is_list(value) or isinstance(value, list) else None
    if (values is None or len(values) != num_classes
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in values)):
        raise ConfigError(f"{COUNTS} must be auto or a list of {num_classes} non-negative "
                          f"integers (boxes per foreground class), got {_shown(value)}")
    return [int(v) for v in values]


def _shown(value) -> str:
    plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return repr(plain)


def _checkpoint_counts(cfg: DictConfig) -> list[int] | None:
    """The counts a resumed run's checkpoint was trained with (None: not resuming, or none)."""
    path = resume_checkpoint(cfg)
    if path is None:
        return None
    loss = (load_checkpoint(path).get("config") or {}).get("loss") or {}
    counts = (loss.get("class_balance") or {}).get("counts")
    return counts if isinstance(counts, list) and counts else None
