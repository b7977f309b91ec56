"""Benchmark RPN target assignment: our batched path against torchvision's per-image path.

Identical inputs; both sides compute the IoU of every anchor with every ground truth, label anchors
with thresholds (0.3, 0.7) plus low-quality matches, and sample 256 anchors per image at half
foreground. They differ in what they encode: torchvision's RPN finds the matched box of every
anchor and encodes all of them (37,800 per 800x1333 image), (1, 1, 1, 1) weights, while ours
(detector/ops/targets.py) finds the matched box and encodes only the sampled foreground rows (at most
128 per image) -- the only deltas the loss uses. That skipped work is part of ``ours`` speedup.
``torchvision_fg_only`` is torchvision's path encoding only its sampled foreground anchors too
(still matching every anchor, as its Matcher does): the speedup over it is the like-for-like
figure. Prints a table of median times; the last line is ``speedup_vs_torchvision: X.XX`` against
torchvision as shipped (CUDA when a GPU is present, else CPU).

    python tools/bench_ops.py --runs 20
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.ops import box_iou as tv_box_iou

from detector.ops.anchors import AnchorGenerator
from detector.ops.boxes import BoxCoder
from detector.ops.matcher import Matcher
from detector.ops.targets import assign_targets


def make_inputs(*, batch: int, num_gt: int, height: int, width: int, device, seed: int):
    """Random ground truth inside an ``height x width`` image: boxes (Tensor[B, G, 4]), validity."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height], dtype=torch.float32)
    wh = 16 + torch.rand(batch, num_gt, 2, generator=gen) * (size / 2 - 16)
    xy = torch.rand(batch, num_gt, 2, generator=gen) * (size - wh)
    gt = torch.cat((xy, xy + wh), dim=-1)
    return gt.to(device), torch.ones(batch, num_gt, dtype=torch.bool, device=device)


def ours(anchor_gen, feature_size, gt, valid, *, matcher, coder, grid: bool):
    anchors = anchor_gen.grid_anchors(feature_size, device=gt.device)
    iou = anchor_gen.iou(feature_size, gt, valid) if grid else None
    out = assign_targets(
        anchors, gt, valid, matcher=matcher, box_coder=coder, num_samples=256,
        positive_fraction=0.5, iou=iou,
    )
    return out.labels, out.deltas


def torchvision_path(anchors, gt, *, matcher, sampler, coder, encode_all: bool = True):
    """torchvision's RegionProposalNetwork.assign_targets_to_anchors + sampler + encode (of every
    anchor, or with ``encode_all=False`` of the sampled foreground anchors only)."""
    labels, matched_boxes = [], []
    for gt_image in gt.unbind(0):
        matched = matcher(tv_box_iou(gt_image, anchors))
        matched_boxes.append(gt_image[matched.clamp(min=0)])
        lab = (matched >= 0).to(torch.float32)
        lab[matched == matcher.BELOW_LOW_THRESHOLD] = 0.0
        lab[matched == matcher.BETWEEN_THRESHOLDS] = -1.0
        labels.append(lab)
    pos, neg = sampler(labels)
    if encode_all:
        return pos, neg, coder.encode(matched_boxes, [anchors] * len(labels))
    rows = [p.nonzero().squeeze(1) for p in pos]
    deltas = coder.encode([m[r] for m, r in zip(matched_boxes, rows, strict=True)],
                          [anchors[r] for r in rows])
    return pos, neg, deltas


def median_ms(fns: dict, *, runs: int, warmup: int, device: torch.device) -> dict:
    """Median wall time of each callable; runs are interleaved so that load drifts hit all alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def bench(device: torch.device, args) -> dict:
    feature_size = (math.ceil(args.height / args.stride), math.ceil(args.width / args.stride))
    anchor_gen = AnchorGenerator(stride=args.stride)
    anchors = anchor_gen.grid_anchors(feature_size, device=device)
    gt, valid = make_inputs(
        batch=args.batch, num_gt=args.num_gt, height=args.height, width=args.width,
        device=device, seed=args.seed,
    )
    matcher = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    tv_matcher = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)
    tv_sampler = tv_utils.BalancedPositiveNegativeSampler(256, 0.5)
    tv_coder = tv_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    fns = {
        "ours": lambda: ours(
            anchor_gen, feature_size, gt, valid, matcher=matcher, coder=coder, grid=True
        ),
        "ours_generic": lambda: ours(
            anchor_gen, feature_size, gt, valid, matcher=matcher, coder=coder, grid=False
        ),
        "torchvision": lambda: torchvision_path(
            anchors, gt, matcher=tv_matcher, sampler=tv_sampler, coder=tv_coder
        ),
        "torchvision_fg_only": lambda: torchvision_path(
            anchors, gt, matcher=tv_matcher, sampler=tv_sampler, coder=tv_coder, encode_all=False
        ),
    }
    labels, _ = fns["ours"]()
    pos, neg, _ = fns["torchvision"]()
    ours_counts = torch.stack(((labels == 1).sum(1), (labels == 0).sum(1)), 1).cpu()
    tv_counts = torch.tensor([[int(p.sum()), int(n.sum())] for p, n in zip(pos, neg, strict=True)])
    if not torch.equal(ours_counts, tv_counts):  # same matching, so the same sample sizes
        raise SystemExit(f"sample sizes differ: {ours_counts.tolist()} vs {tv_counts.tolist()}")
    return median_ms(fns, runs=args.runs, warmup=args.warmup, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-gt", type=int, default=20)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when available")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    hf, wf = math.ceil(args.height / args.stride), math.ceil(args.width / args.stride)
    print(f"{args.batch} images of {args.height}x{args.width}, {hf}x{wf} map, "
          f"{hf * wf * 9} anchors and {args.num_gt} gt boxes each; median of {args.runs} runs; "
          f"torch threads: {torch.get_num_threads()}")
    print("ours = AnchorGenerator.iou + assign_targets (encodes sampled foreground only); "
          "ours_generic = assign_targets computing batched_box_iou itself; torchvision encodes "
          "every anchor, tv_fg_only = torchvision encoding its sampled foreground only")
    print(f"{'device':<8}{'ours ms':>10}{'ours_generic ms':>17}{'torchvision ms':>16}"
          f"{'speedup':>9}{'tv_fg_only ms':>15}{'speedup':>9}")
    speedup = {}
    for device in devices:
        ms = bench(device, args)
        speedup[device.type] = ms["torchvision"] / ms["ours"]
        like = ms["torchvision_fg_only"] / ms["ours"]
        print(f"{device.type:<8}{ms['ours']:>10.2f}{ms['ours_generic']:>17.2f}"
              f"{ms['torchvision']:>16.2f}{speedup[device.type]:>8.2f}x"
              f"{ms['torchvision_fg_only']:>15.2f}{like:>8.2f}x")
    print(f"speedup_vs_torchvision: {speedup[devices[-1].type]:.2f}")


if __name__ == "__main__":
    main()
