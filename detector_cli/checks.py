"""Config validation for the command-line tools: one clear line per problem, before any work.

The checks here are the tool-level ones: types, paths and ranges of keys that no library
constructor holds, and Hydra's rejection of an override (``check_overrides``). A value rule that
a constructor of ``detector/`` already holds (device, precision: ``detector.runtime``; the
``train.*`` step options, the divergence guard, the schedule's choices: their classes) is not
repeated: ``check_runtime`` calls the library's resolution, and ``detector_cli.train`` builds the
cheap objects before any data is read.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from detector.checkpoint import CheckpointError, check_checkpoint_file, find_resume_checkpoint
from detector.errors import UserError
from detector.runtime import resolve_device, resolve_precision

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

__all__ = ["ConfigError", "check_anchor_values", "check_checkpoint_dataset", "check_dataset",
           "check_eval_config", "check_eval_metric", "check_export_config", "check_inspect_config", "check_number",
           "check_overrides", "check_path", "check_predict_config", "check_reliability", "check_runtime",
           "check_serve_config", "check_train_config", "resume_checkpoint"]


class ConfigError(UserError, ValueError):
    """A bad configuration value, reported as one line."""


def _positive_int(cfg: DictConfig, key: str) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def check_runtime(cfg: DictConfig, *, device: bool = True) -> None:
    """``cfg.device`` (unless ``device`` is False: onnxruntime runs on the CPU whatever it says)
    and ``cfg.precision`` through the library's own rules (``detector.runtime``): a bad name or
    a CUDA device this machine lacks is one ``OptionError`` line before anything is read."""
    where = resolve_device(cfg.device) if device else torch.device("cpu")
    resolve_precision(cfg.precision, where)


def check_number(cfg: DictConfig, key: str, *, low: float, high: float = math.inf,
                 low_open: bool = False) -> None:
    """``cfg[key]`` is a finite number in [low, high] (``low_open``: above low)."""
    value = cfg[key]
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (value > low if low_open else value >= low) or not value <= high:
        where = (f"be a number above {low:g}" if low_open else f"be a number >= {low:g}"
                 if high == math.inf else f"lie in [{low:g}, {high:g}]")
        where = "be a positive number" if low_open and low == 0 and high == math.inf else where
        raise ConfigError(f"{key} must {where}, got {value!r}")


def check_path(cfg: DictConfig, key: str, *, required: str | None = None) -> None:
    """``cfg[key]`` is a path (a string) or null; ``required``: the message when it is null."""
    value = cfg[key]
    if value is None and required:
        raise ConfigError(required)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key} must be a path, got {value!r}")


def check_predict_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value of tools/predict.py's config."""
    check_path(cfg, "input", required="input=PATH is required: an image, a folder, a glob or a "
                                      "video")
    for key in ("checkpoint", "outputs_root", "output", "onnx"):
        check_path(cfg, key)
    check_number(cfg, "min_score", low=0.0, high=1.0)
    _positive_int(cfg, "batch_size")
    if cfg.backend not in ("torch", "onnxruntime"):
        raise ConfigError(f"backend must be torch or onnxruntime, got {cfg.backend!r}")
    if not isinstance(cfg.progress, bool):
        raise ConfigError(f"progress must be true or false, got {cfg.progress!r}")
    _check_tta(cfg, refused="backend=onnxruntime" if cfg.backend == "onnxruntime" else None)
    check_runtime(cfg, device=cfg.backend == "torch")


def _check_tta(cfg: DictConfig, *, refused: str | None) -> None:
    """``tta`` is true or false, and false where ``refused`` (a setting that cannot do it)."""
    tta = cfg.get("tta", False)
    if not isinstance(tta, bool):
        raise ConfigError(f"tta must be true or false, got {tta!r}")
    if tta and refused is not None:
        raise ConfigError(f"tta=true is not supported with {refused} (it needs the PyTorch "
                          f"model)")


def check_export_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value of tools/export.py's config."""
    for key in ("checkpoint", "outputs_root", "output"):
        check_path(cfg, key)
    for key in ("height", "width"):
        if cfg[key] is not None:
            _positive_int(cfg, key)


def _common(cfg: DictConfig) -> None:
    """Keys shared by train.yaml and eval.yaml."""
    if cfg.num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {cfg.num_workers}")
    check_runtime(cfg)


def check_dataset(cfg: DictConfig) -> None:
    """The dataset root must exist (the generated shapes set is created on first use)."""
    if cfg.dataset.name == "shapes":
        return
    root = Path(cfg.dataset.root)
    if not root.is_dir():
        raise ConfigError(
            f"dataset.root={root} does not exist (dataset={cfg.dataset.name}); point "
            f"dataset.root at your data, see datasets/README.md")


def check_checkpoint_dataset(name, split_spec) -> None:
    """A checkpoint's dataset root that is missing here: one line, as for dataset.root=."""
    root = split_spec.get("root") if isinstance(split_spec, dict) else None
    if name != "shapes" and isinstance(root, str) and not Path(root).is_dir():
        raise ConfigError(f"the checkpoint's dataset root {root} does not exist here "
                          f"(dataset={name}); pass dataset={name} dataset.root=... to point at "
                          f"your copy of the data")


def check_anchor_values(cfg: DictConfig) -> None:
    """``dataset.anchor_sizes`` / ``dataset.anchor_ratios``: a non-empty list of positive finite
    numbers, or ``auto`` (fitted to the training boxes: ``detector_cli.anchors``)."""
    for key in ("dataset.anchor_sizes", "dataset.anchor_ratios"):
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if isinstance(value, str) and value.strip().lower() == "auto":
            continue
        items = list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else []
        if not items or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                and math.isfinite(v) and v > 0 for v in items):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise ConfigError(f"{key} must be a list of positive numbers or auto, got {shown!r}")


def check_train_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value of a training config (the values the Trainer's
    parts hold rules for: ``detector_cli.train.build_options``)."""
    check_dataset(cfg)
    check_anchor_values(cfg)
    for key in ("batch_size", "train.log_period", "train.eval_batch_size", "dataset.max_size"):
        _positive_int(cfg, key)
    # every step length of the schedule (iterations, rpn_iterations, ...)
    for key in cfg.schedule:
        if str(key).endswith("iterations"):
            _positive_int(cfg, f"schedule.{key}")
    _common(cfg)
    if not cfg.optimizer.lr > 0:
        raise ConfigError(f"optimizer.lr must be positive, got {cfg.optimizer.lr}")
    clip = cfg.train.clip_grad_norm
    if clip is not None and not clip > 0:
        raise ConfigError(f"train.clip_grad_norm must be positive or null, got {clip}")
    check_reliability(cfg)


def _non_negative_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{key} must be an integer >= 0, got {value!r}")


def check_reliability(cfg: DictConfig) -> None:
    """Checkpointing and resume keys of train.yaml (the NaN guard, divergence and memory-format
    keys: their constructors, ``detector_cli.train.build_options``)."""
    for key in ("train.checkpoint_period", "train.eval_period", "train.histogram_period",
                "train.divergence_window"):
        _non_negative_int(cfg, key)
    _positive_int(cfg, "train.keep_checkpoints")
    _check_best(cfg)
    _check_train_eval_metric(cfg)
    resume = cfg.resume
    if not isinstance(resume, bool | None) and str(resume).lower() not in ("true", "false"):
        try:  # a directory, a FIFO, /dev/zero, a symlink loop: named as such, never opened
            check_checkpoint_file(str(resume))
        except FileNotFoundError as error:
            raise ConfigError(f"resume={resume}: no such checkpoint file ({error}; resume=true "
                              f"continues the newest checkpoint of output_dir)") from None
        except CheckpointError as error:
            raise ConfigError(f"resume={resume}: {error}") from None


def _check_best(cfg: DictConfig) -> None:
    """``train.best_metric`` and ``train.early_stop_patience`` need periodic evaluation
    (``train.eval_period`` > 0); their values: ``detector.engine.best.BestRule``."""
    t = cfg.train
    if t.get("eval_period") != 0:
        return
    metric, patience = t.get("best_metric", "auto"), t.get("early_stop_patience")
    if metric not in ("auto", None):
        raise ConfigError(f"train.best_metric={metric} needs periodic evaluation: set "
                          f"train.eval_period=N (> 0), or train.best_metric=null")
    if patience is not None:
        raise ConfigError(f"train.early_stop_patience={patience} needs periodic evaluation: set "
                          f"train.eval_period=N (> 0), or train.early_stop_patience=null")


def _check_train_eval_metric(cfg: DictConfig) -> list[str]:
    """``train.eval_metric`` (``check_eval_metric``), and a VOC ``train.best_metric`` only
    where it is evaluated. Returns the metric names."""
    names = check_eval_metric(cfg.train.get("eval_metric", "coco"), key="train.eval_metric")
    metric = cfg.train.get("best_metric", "auto")
    needed = {"VOC07": "voc07", "VOC": "voc"}.get(metric) if isinstance(metric, str) else None
    if needed is not None and needed not in names:
        raise ConfigError(f"train.best_metric={metric} needs train.eval_metric to include "
                          f"{needed} (e.g. train.eval_metric=[coco,{needed}])")
    return names


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint ``resume`` asks for: None (false), the newest ``iter_*.pth`` of
    ``output_dir`` (true) or the given file."""
    resume = cfg.resume
    if resume is None or resume is False or str(resume).lower() == "false":
        return None
    if resume is True or str(resume).lower() == "true":
        found = find_resume_checkpoint(cfg.output_dir)
        if found is None:
            raise ConfigError(
                f"resume=true but {Path(cfg.output_dir) / 'checkpoints'} holds no iter_*.pth: "
                f"pass output_dir=<the run to resume> (or resume=PATH to a checkpoint)")
        return found
    return Path(str(resume))


def _one_line(error: Exception) -> str:
    """Hydra's multi-line composition error as one line: its first paragraph (plus the
    available options of a group, when it lists them)."""
    lines = [line.strip() for line in str(error).splitlines()]
    first = []
    for line in lines:
        if not line or line.startswith(("full_key", "object_type", "Config search path")):
            break
        first.append(line)
    message = " ".join(first) or type(error).__name__
    if first[0].startswith("Could not override") and first[1:2] and first[1].startswith("To "):
        message = f"{first[0].rstrip('.')}: no such key in the config ({first[1][0].lower()}" \
                  f"{first[1][1:]} if it is not a typo)"
    if "Available options in" in str(error):
        start = lines.index(next(x for x in lines if x.startswith("Available options in"))) + 1
        options = [x for x in lines[start:] if x and ":" not in x]
        message += f" (available: {', '.join(options)})"
    return message


def check_overrides(overrides: list[str], *, config_name: str,
                    config_dir: Path = CONFIG_DIR) -> None:
    """Compose ``config_name`` with command-line ``overrides`` as Hydra will, and turn Hydra's
    rejection (an unknown key, a missing group option, a syntax error) into one ConfigError
    line. Arguments that are Hydra flags (``--help``, ``-m``, ...) are left to Hydra."""
    if any(arg.startswith("-") for arg in overrides):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            compose(config_name=config_name, overrides=list(overrides))
    except OverrideParseException as error:
        raise ConfigError(f"could not parse the command line {' '.join(overrides)!r}: "
                          f"{_one_line(error)}") from None
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_one_line(error)) from None


def check_eval_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value of an evaluation config."""
    _positive_int(cfg, "batch_size")
    if cfg.num_visualize < 0:
        raise ConfigError(f"num_visualize must be >= 0, got {cfg.num_visualize}")
    if cfg.split not in ("train", "val"):
        raise ConfigError(f"split must be train or val, got {cfg.split!r}")
    _check_tta(cfg, refused="results= (a saved results file)" if cfg.get("results") else None)
    if not isinstance(cfg.get("proposal_recall", True), bool):
        raise ConfigError(f"proposal_recall must be true or false, got "
                          f"{cfg.get('proposal_recall')!r}")
    if cfg.get("nms") not in (None, "hard", "linear", "gaussian"):
        raise ConfigError(f"nms must be null, hard, linear or gaussian, got {cfg.nms!r}")
    sigma = cfg.get("soft_nms_sigma")
    if sigma is not None and not (isinstance(sigma, int | float) and not isinstance(sigma, bool)
                                  and 1e-6 <= sigma <= 100):
        raise ConfigError(f"soft_nms_sigma must be null or a number in [1e-06, 100], "
                          f"got {sigma!r}")
    threshold = cfg.get("score_threshold")
    if threshold is not None and not (isinstance(threshold, int | float)
                                      and not isinstance(threshold, bool) and 0 <= threshold < 1):
        raise ConfigError(f"score_threshold must be null or a number in [0, 1), got {threshold!r}")
    proposals = cfg.get("proposals")
    if proposals is not None and not (isinstance(proposals, int) and not isinstance(proposals, bool)
                                      and 1 <= proposals <= 100_000):
        raise ConfigError(f"proposals must be null or an integer in [1, 100000], "
                          f"got {proposals!r}")
    _common(cfg)


EVAL_METRICS = ("coco", "voc07", "voc")


def check_eval_metric(value, *, key: str = "metric") -> list[str]:
    """The evaluation metrics a config names (``coco``, ``voc07``, ``voc``; one or a list), in
    order without repeats; ConfigError naming ``key`` for anything else or an empty list."""
    names = list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]
    bad = [name for name in names if not isinstance(name, str) or name not in EVAL_METRICS]
    if bad or not names:
        raise ConfigError(f"{key} must be one of {', '.join(EVAL_METRICS)} or a list of them, "
                          f"got {value!r}")
    return list(dict.fromkeys(names))


def check_inspect_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value of tools/inspect_model.py's config."""
    if not isinstance(cfg.num_images, int) or cfg.num_images < 0:
        raise ConfigError(f"num_images must be an integer >= 0, got {cfg.num_images!r}")
    for key in ("abs_threshold", "rel_threshold", "gamma_threshold"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
            raise ConfigError(f"{key} must be a number >= 0, got {cfg[key]!r}")
    if cfg.split not in ("train", "val"):
        raise ConfigError(f"split must be train or val, got {cfg.split!r}")
    resolve_device(cfg.device)


def check_serve_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value of tools/serve.py's config."""
    if not isinstance(cfg.port, int) or not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port must be an integer in 0..65535 (0 = any free port), "
                          f"got {cfg.port!r}")
    for key, least in (("threads", 1), ("num_samples", 0)):
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{key} must be an integer >= {least}, got {value!r}")
    for key in ("max_upload_mb", "max_megapixels"):
        check_number(cfg, key, low=0.0, low_open=True)
    for key in ("min_score", "display_min_score"):
        check_number(cfg, key, low=0.0, high=1.0)
    if not isinstance(cfg.host, str) or not cfg.host:
        raise ConfigError(f"host must be a host name or address, got {cfg.host!r}")
    for key in ("checkpoint", "outputs_root"):
        check_path(cfg, key)
    check_runtime(cfg)
