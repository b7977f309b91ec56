"""What a model costs: forward FLOPs and parameters per stage (``tools/bench_model.py --flops``),
and a CPU's nominal fp32 peak to set an achieved rate against.

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts: matmuls, convolutions and
their backward passes, a multiply-add counted as 2. Everything else (BN, ReLU, pooling, RoIAlign's
bilinear sampling, box decoding, top-k, NMS) counts 0 there, so it is absent from these figures.
RoIAlign is counted with torchvision's kernel (``dense_roi_align``): the CPU's sparse product
(``detector.modeling.pooler``) reaches the counter as a dense matmul over every feature cell, which
would add 2 x 49 x C x Hf x Wf FLOPs per RoI for work that has 16 nonzero weights per bin.

Stages of a ``FasterRCNN`` (``detector.modeling.faster_rcnn``): ``backbone``; ``rpn`` (the RPN
head: 3x3 conv + 1x1 objectness / deltas); ``roi_head`` (pooler + box head + class and box
predictors); ``other`` (what the whole forward counts beyond these: anchors, proposal generation,
detection post-processing; 0 for the models here).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "STAGES",
    "CpuPeak",
    "count_model_flops",
    "cpu_peak_gflops",
    "dense_roi_align",
    "fixed_rois",
    "parameter_counts",
]

STAGES = ("backbone", "rpn", "roi_head")
_MODULES = {"backbone": "backbone", "rpn": "rpn_head", "roi_head": "roi_head"}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters (elements, trainable or not) of ``backbone``, ``rpn``, ``roi_head``, ``other``
    (the rest of the model) and ``total``."""
    counts = {stage: sum(p.numel() for p in getattr(model, name).parameters())
              for stage, name in _MODULES.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["other"] = counts["total"] - sum(counts[stage] for stage in STAGES)
    return counts


def fixed_rois(*, batch: int, count: int, height: int, width: int, seed: int = 0,
               device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``count`` random valid xyxy boxes per image (``[B, count, 4]``, at least 1 px wide, inside
    H x W) and an all-True ``valid [B, count]``: the RoI head's input at a fixed count."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height], dtype=torch.float32)
    wh = 1 + torch.rand(batch, count, 2, generator=gen) * (size - 1).clamp(min=0)
    xy = torch.rand(batch, count, 2, generator=gen) * (size - wh)
    boxes = torch.cat((xy, xy + wh), dim=-1).to(device)
    return boxes, torch.ones(batch, count, dtype=torch.bool, device=device)


@contextlib.contextmanager
def dense_roi_align(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model.roi_head.pooler`` (a ``RoIAlign`` with a ``backend``) uses
    torchvision's kernel, which the FLOP counter counts as 0 (see the module docstring)."""
    pooler = getattr(getattr(model, "roi_head", None), "pooler", None)
    saved = getattr(pooler, "backend", None)
    if saved is not None:
        pooler.backend = "torchvision"
    try:
        yield
    finally:
        if saved is not None:
            pooler.backend = saved


def _stage_totals(counter: FlopCounterMode, model: nn.Module) -> dict[str, int]:
    counts = counter.get_flop_counts()
    root = type(model).__name__
    return {stage: int(sum(counts.get(f"{root}.{name}", {}).values()))
            for stage, name in _MODULES.items()}


@torch.no_grad()
def count_model_flops(model: nn.Module, images: Tensor, image_sizes: Tensor, *,
                      rois_per_image: int, seed: int = 0) -> dict[str, int]:
    """Forward FLOPs of a ``FasterRCNN`` in eval mode, per stage, at ``rois_per_image`` RoIs.

    The model runs once on ``images [B, 3, H, W]`` / ``image_sizes [B, 2]`` to final detections
    with ``rois_per_image`` random RoIs per image in place of its proposals (so that the RoI head
    sees exactly that many whatever NMS keeps) and RoIAlign under ``dense_roi_align``; its
    proposal generator runs once more on that forward's RPN outputs, and both runs are counted.
    The model is left in eval mode.

    Returns:
        dict: ``backbone``, ``rpn``, ``roi_head``, ``other`` (the whole minus the three) and
        ``total`` FLOPs, and ``rois_per_image``.
    """
    model.eval()
    rois = fixed_rois(batch=images.shape[0], count=rois_per_image, height=images.shape[-2],
                      width=images.shape[-1], seed=seed, device=images.device)
    counter = FlopCounterMode(display=False)
    with dense_roi_align(model), counter:
        out = model(images, image_sizes, proposals=rois)
        model.detect(out)
        model.proposal_generator(out["anchors"], out["pred_rpn_logits"], out["pred_rpn_deltas"],
                                 image_sizes)
    flops = _stage_totals(counter, model)
    flops["total"] = int(counter.get_total_flops())
    flops["other"] = flops["total"] - sum(flops[stage] for stage in STAGES)
    flops["rois_per_image"] = rois_per_image
    return flops


@dataclass(frozen=True)
class CpuPeak:
    """A CPU's nominal fp32 peak: ``gflops`` (None when unknown) and how it was reckoned."""

    gflops: float | None
    assumption: str


# fp32 FLOP per cycle per core by ISA: lanes x 2 (FMA) x 2 FMA units, the upper bound (parts with
# one FMA unit per core have half). Checked in this order against /proc/cpuinfo's flags.
_FLOP_PER_CYCLE = (("avx512f", 64, "AVX-512: 16 lanes x 2 (FMA) x 2 FMA units"),
                   ("avx2", 32, "AVX2: 8 lanes x 2 (FMA) x 2 FMA units"))


def cpu_peak_gflops(threads: int, cpuinfo: str | None = None) -> CpuPeak:
    """Nominal fp32 peak of ``threads`` cores: cores x clock x FLOP/cycle.

    Cores are ``min(threads, physical cores)`` (distinct physical id / core id pairs), the clock
    the first ``cpu MHz`` of ``/proc/cpuinfo`` (the current clock, not turbo), FLOP/cycle from the
    ISA (``_FLOP_PER_CYCLE``, assuming 2 FMA units and FMA present). Unknown (None) when any of
    these cannot be read: not Linux, no AVX2/AVX-512 with FMA, no MHz.
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M)
    flags = set(re.findall(r"^flags\s*:(.*)$", cpuinfo, re.M)[0].split()) if "flags" in cpuinfo \
        else set()
    cores = len(set(re.findall(r"^physical id\s*:\s*(\d+)\s*$\n(?:.*\n)*?^core id\s*:\s*(\d+)",
                               cpuinfo, re.M)))
    per_cycle = next(((n, why) for flag, n, why in _FLOP_PER_CYCLE
                      if flag in flags and "fma" in flags), None)
    if not mhz or not per_cycle or not cores or float(mhz.group(1)) <= 0:
        return CpuPeak(None, "unknown (needs /proc/cpuinfo with cpu MHz, core ids and "
                             "AVX2/AVX-512 + FMA flags; or pass --peak-gflops)")
    used = min(threads, cores)
    clock = float(mhz.group(1)) / 1000
    return CpuPeak(used * clock * per_cycle[0],
                   f"{used} cores x {clock:.2f} GHz (/proc/cpuinfo) x {per_cycle[0]} fp32 "
                   f"FLOP/cycle ({per_cycle[1]}; one FMA unit would halve it)")
