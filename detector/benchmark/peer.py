"""torchvision's ``FasterRCNN`` as a peer of our detector on real training data
(``tools/bench_peer.py``): built on our trunk, fed our batches, trained with our optimiser,
schedule, precision and budget, evaluated by our evaluation; its own defaults otherwise.

Shorthand: B images, H x W padded batch size, h x w one image's size, G = most boxes in one
image of the batch, n boxes of one image, D detections of one image, K foreground classes.

``PeerDetector`` puts torchvision's model behind our model's calling convention: ``forward(images,
image_sizes, targets)`` returns its loss dict in training, ``forward(images, image_sizes)`` and
``detect(outputs, scales)`` its detections in original-image pixels in eval mode, so that
``detector.evaluation.inference.predict`` evaluates it exactly like ours. Its transform neither
resizes (the images come resized by our loader) nor normalises (mean 0, std 1: our loader
normalised them); it pads to multiples of 32 as our collate does. ``train_peer`` is the
training loop; ``peer_settings`` reads what the built model does (for the list of differences).
"""

from __future__ import annotations

import inspect
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from tqdm import tqdm

from detector import run_files
from detector.errors import OptionError
from detector.modeling.postprocess import boxes_to_original
from detector.runtime import autocast, to_device

__all__ = ["FIXED_DIFFERENCES", "PEERS", "PeerDetector", "PeerRun", "PeerTraining",
           "build_peer", "check_peer_overrides", "detections_to_original", "image_list",
           "peer_settings", "step_time", "target_list", "train_peer"]

log = logging.getLogger("bench_peer")
PEERS = ("torchvision",)
# torchvision FasterRCNN arguments that peer_overrides may not set: what makes it our peer (the
# trunk, the classes, the anchors from the config, a transform that keeps our images) and modules
PINNED = ("backbone", "num_classes", "min_size", "max_size", "image_mean", "image_std",
          "rpn_anchor_generator", "rpn_head", "box_roi_pool", "box_head", "box_predictor",
          "kwargs")
# what differs by construction, whatever the settings (the table lists the settings that differ)
FIXED_DIFFERENCES = (
    "anchors: torchvision places them at offset 0 (cell corners), ours at model.anchor_offset",
    "head initialisation: torchvision's own (RPN conv/heads normal std 0.01, bias 0; box head "
    "and predictor nn.Linear defaults); the trunk is ours, the same weights from the same seed",
    "losses are computed inside torchvision's forward (under the same autocast), ours in "
    "float32 after it",
    "proposals: torchvision drops boxes under 1e-3 px and adds the ground truth to the RoIs it "
    "samples from",
    "its transform keeps the images as our loader gives them (no resize, mean 0 / std 1)",
)


class _KeepImages(GeneralizedRCNNTransform):
    """torchvision's transform without the resize (our loader already resized the images)."""

    def resize(self, image: Tensor, target: dict | None = None) -> tuple[Tensor, dict | None]:
        return image, target


def check_peer_overrides(overrides: Mapping) -> dict:
    """``overrides`` as keyword arguments of torchvision's ``FasterRCNN`` (e.g.
    ``rpn_post_nms_top_n_test: 300``); OptionError naming the first one it may not take."""
    allowed = set(inspect.signature(TorchvisionFasterRCNN.__init__).parameters) - {"self"}
    for key in overrides:
        if key not in allowed or key in PINNED:
            why = "is fixed by the harness" if key in allowed else "is no FasterRCNN argument"
            raise OptionError("peer_overrides", f"peer_overrides.{key} {why} (settable: "
                                                f"{', '.join(sorted(allowed - set(PINNED)))})")
    return dict(overrides)


def build_peer(*, trunk: nn.Module, num_classes: int, anchor_sizes: Sequence[float],
               anchor_ratios: Sequence[float], overrides: Mapping | None = None
               ) -> TorchvisionFasterRCNN:
    """torchvision's FasterRCNN on ``trunk`` (a backbone with ``out_channels``: one feature
    map), ``num_classes`` = K foreground classes (its predictor gets K + 1), one feature map's
    anchors ``anchor_sizes`` x ``anchor_ratios`` (height / width, as ours), RoIAlign 7x7 on that
    map; everything else torchvision's defaults, or ``overrides`` (``check_peer_overrides``)."""
    model = TorchvisionFasterRCNN(
        trunk, num_classes=num_classes + 1,
        rpn_anchor_generator=AnchorGenerator(sizes=(tuple(float(s) for s in anchor_sizes),),
                                             aspect_ratios=(tuple(float(r) for r in anchor_ratios),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        **check_peer_overrides(overrides or {}))
    model.transform = _KeepImages(min_size=1, max_size=1, image_mean=[0.0, 0.0, 0.0],
                                  image_std=[1.0, 1.0, 1.0], size_divisible=32)
    return model


def image_list(images: Tensor, image_sizes: Tensor) -> list[Tensor]:
    """images (Tensor[B, 3, H, W]) padded, image_sizes (LongTensor[B, 2]) (h, w) -> B views
    Tensor[3, h, w] without the padding."""
    return [image[:, :h, :w] for image, (h, w) in zip(images, image_sizes.tolist(), strict=True)]


def target_list(boxes: Tensor, labels: Tensor, box_valid: Tensor) -> list[dict[str, Tensor]]:
    """boxes (Tensor[B, G, 4]) xyxy, labels (LongTensor[B, G]) 1..K, box_valid (BoolTensor[B, G])
    -> B dicts ``boxes [n, 4]``, ``labels [n]`` (the valid rows; torchvision's targets)."""
    return [{"boxes": b[v], "labels": lab[v]}
            for b, lab, v in zip(boxes, labels, box_valid, strict=True)]


def detections_to_original(detections: Sequence[Mapping[str, Tensor]],
                           scales: Tensor | None) -> list[dict[str, Tensor]]:
    """torchvision's detections (B dicts ``boxes [D, 4]`` xyxy resized pixels, ``scores [D]``,
    ``labels [D]`` 1..K) -> ours: the same with boxes in original pixels (scales
    Tensor[B, 2]: (sy, sx) resized / original; None keeps resized pixels)."""
    out = []
    for i, det in enumerate(detections):
        boxes = det["boxes"].float()
        if scales is not None:
            boxes = boxes_to_original(boxes[None], scales[i:i + 1])[0]
        out.append({"boxes": boxes, "scores": det["scores"].float(), "labels": det["labels"]})
    return out


class PeerDetector(nn.Module):
    """torchvision's FasterRCNN with our model's calling convention (see the module docstring).

    Args:
        model (FasterRCNN): torchvision's, built by ``build_peer``.
    """

    def __init__(self, *, model: TorchvisionFasterRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor, targets: dict | None = None, *,
                detect: bool | None = None) -> dict:
        """Training (``targets``: ``boxes``, ``labels``, ``box_valid`` as in our Batch): the
        loss dict (``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
        ``loss_rpn_box_reg``); eval: ``{"detections": [...]}`` in resized pixels."""
        inputs = image_list(images, image_sizes)
        if self.training:
            return self.model(inputs, target_list(targets["boxes"], targets["labels"],
                                                  targets["box_valid"]))
        return {"detections": self.model(inputs)}

    def detect(self, outputs: dict, scales: Tensor | None = None) -> list[dict[str, Tensor]]:
        return detections_to_original(outputs["detections"], scales)


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ", ".join(_show(v) for v in value)
    return str(value)


def peer_settings(model: TorchvisionFasterRCNN) -> dict[str, str]:
    """What the built model does, read from it, as display strings (the keys of the comparison's
    settings table; ``detector_cli.bench_peer.ours_settings`` gives ours)."""
    rpn, roi = model.rpn, model.roi_heads
    pool = roi.box_roi_pool
    size = pool.output_size if isinstance(pool.output_size, int) else pool.output_size[0]
    return {
        "anchor_sizes": _show(rpn.anchor_generator.sizes[0]),
        "anchor_ratios": _show(rpn.anchor_generator.aspect_ratios[0]),
        "anchor_offset": "0",
        "rpn_num_samples": str(rpn.fg_bg_sampler.batch_size_per_image),
        "rpn_positive_fraction": _show(float(rpn.fg_bg_sampler.positive_fraction)),
        "rpn_fg_iou / bg_iou": _show((float(rpn.proposal_matcher.high_threshold),
                                      float(rpn.proposal_matcher.low_threshold))),
        "rpn_pre_nms_top_n (train, test)": _show((rpn._pre_nms_top_n["training"],
                                                  rpn._pre_nms_top_n["testing"])),
        "rpn_post_nms_top_n (train, test)": _show((rpn._post_nms_top_n["training"],
                                                   rpn._post_nms_top_n["testing"])),
        "rpn_nms_threshold": _show(float(rpn.nms_thresh)),
        "rpn_cls_loss": "binary cross-entropy, weight 1",
        "rpn_box_loss": "smooth L1 beta 0.111, weight 1, / sampled anchors",
        "rpn_objectness_prior": "none (bias 0)",
        "roi_num_samples": str(roi.fg_bg_sampler.batch_size_per_image),
        "roi_positive_fraction": _show(float(roi.fg_bg_sampler.positive_fraction)),
        "roi_fg_iou / bg_iou": _show((float(roi.proposal_matcher.high_threshold),
                                      float(roi.proposal_matcher.low_threshold))),
        "roi_cls_loss": "softmax cross-entropy, weight 1",
        "roi_box_loss": "smooth L1 beta 0.111, weight 1, / sampled RoIs",
        "box_coder_weights (rpn; roi)": f"{_show(rpn.box_coder.weights)}; "
                                        f"{_show(roi.box_coder.weights)}",
        "pooler": f"RoIAlign {size}x{size}, sampling {pool.sampling_ratio}, aligned False",
        "box_head": f"2 fc, {roi.box_head.fc7.out_features} wide",
        "score_threshold": _show(float(roi.score_thresh)),
        "nms": f"hard, IoU {_show(float(roi.nms_thresh))}",
        "max_detections": str(roi.detections_per_img),
    }


@dataclass(frozen=True)
class PeerTraining:
    """How the peer trains (ours' values, from the same config).

    Args:
        iterations (int): optimiser steps. precision (str): fp32 | bf16 | fp16.
        clip_grad_norm (float, optional): max total gradient norm (None: no clipping).
        log_period (int): steps between log lines / metrics.jsonl points.
        progress (bool): a tqdm bar. memory_format: the images' layout (``apply_layout``).
    """

    iterations: int
    precision: str = "fp32"
    clip_grad_norm: float | None = None
    log_period: int = 20
    progress: bool = True
    memory_format: torch.memory_format = torch.contiguous_format


@dataclass
class PeerRun:
    """What ``train_peer`` did: steps taken, the seconds of each (data loading included), the
    wall time, and ``diverged`` (a message) when a loss or gradient turned non-finite."""

    iterations: int = 0
    wall_time: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    diverged: str | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(peer: PeerDetector, batch: dict, *, optimizer: torch.optim.Optimizer,
          scaler: torch.amp.GradScaler, device: torch.device, options: PeerTraining
          ) -> tuple[dict[str, float], float]:
    """Forward under autocast, backward of the summed losses, clipping. Returns (the loss terms,
    the gradient norm before clipping); the caller steps the optimiser if they are finite."""
    batch = to_device(batch, device)
    images = batch["images"].contiguous(memory_format=options.memory_format)
    with autocast(device, options.precision):
        losses = peer(images, batch["image_sizes"], batch)
    losses = {k: v.float() for k, v in losses.items()}
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(sum(losses.values())).backward()
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, options.clip_grad_norm or math.inf)
    return {k: float(v.detach()) for k, v in losses.items()}, float(norm)


def train_peer(peer: PeerDetector, *, batches: Iterator[dict], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
               options: PeerTraining, metrics_path: Path | None = None,
               memory_mb: Callable[[], float] | None = None) -> PeerRun:
    """Train ``peer`` for ``options.iterations`` steps on ``batches`` (our Batch dicts, e.g. a
    ``BatchStream``): the sum of its four losses, clipped gradients, one optimiser and scheduler
    step each. Log points every ``log_period`` steps (and at the end) go to the log as
    ``[peer] iter i/N  loss ...  s/it`` and to ``metrics_path`` (metrics.jsonl records, like
    ours; ``memory_mb()``: the memory figure they show). A non-finite loss or gradient stops
    the run (``PeerRun.diverged``)."""
    scaler = torch.amp.GradScaler(device.type, enabled=options.precision == "fp16"
                                  and device.type == "cuda")
    peer.train()
    run, window = PeerRun(), _Window()
    bar = tqdm(total=options.iterations, desc="peer", disable=not options.progress,
               dynamic_ncols=True)
    start = time.perf_counter()
    for it in range(1, options.iterations + 1):
        tick, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        values, norm = _step(peer, next(batches), optimizer=optimizer, scaler=scaler,
                             device=device, options=options)
        if not scaler.is_enabled() and not all(map(math.isfinite, [*values.values(), norm])):
            run.diverged = f"non-finite loss or gradient at iteration {it}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in {**values, "grad_norm": norm}.items())
            log.error("[peer] %s", run.diverged)
            break
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        _sync(device)
        run.step_seconds.append(time.perf_counter() - tick)
        run.iterations = it
        window.add(values, norm)
        bar.update()
        if it % max(1, options.log_period) == 0 or it == options.iterations:
            window.log_point(iteration=it, total=options.iterations, lr=lr, path=metrics_path,
                             memory=memory_mb() if memory_mb is not None else 0.0)
    bar.close()
    run.wall_time = time.perf_counter() - start
    return run


class _Window:
    """The steps since the last log point: summed loss terms, gradient norms, their time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.norms: list[float] = []
        self.start = time.perf_counter()

    def add(self, values: dict[str, float], norm: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.norms.append(norm)

    def log_point(self, *, iteration: int, total: int, lr: float, memory: float,
                  path: Path | None) -> None:
        """Log the window's averages as ours does, append them to ``path``, start anew."""
        count = max(1, len(self.norms))
        seconds = (time.perf_counter() - self.start) / count
        losses = {k: v / count for k, v in self.sums.items()}
        grad = (sum(self.norms) / count, max(self.norms)) if self.norms else None
        terms = "  ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in losses.items())
        shown = "" if grad is None else f"  grad {grad[0]:.2f} (max {grad[1]:.2f})"
        log.info("[peer] iter %d/%d  loss %.4f (%s)%s  lr %.2e  %.3f s/it  mem %.0f MiB",
                 iteration, total, sum(losses.values()), terms, shown, lr, seconds, memory)
        if path is not None:
            run_files.append_record(path, run_files.train_record(
                iteration=iteration, phase="peer", phase_iter=iteration, losses=losses, lr=lr,
                sec_per_iter=seconds, memory_mb=memory, grad_norm=grad))
        self.reset()


def step_time(records: Sequence[Mapping]) -> float | None:
    """Seconds per step of a run from its metrics.jsonl records: the median ``sec_per_iter`` of
    its training log points, the first (warm-up) left out when there are several; None
    without any. The same rule for ours and the peer."""
    times = [r["sec_per_iter"] for r in records
             if isinstance(r.get("sec_per_iter"), int | float) and math.isfinite(r["sec_per_iter"])]
    if len(times) > 1:
        times = times[1:]
    return statistics.median(times) if times else None
