"""Benchmark the whole model against torchvision's FasterRCNN on the same VGG16-BN trunk.

Both models are built with the settings of issue #12 (detector/benchmark/reference.py), hold the
same weights, and run on identical random images with 8 ground-truth boxes each: a training step (forward, losses, backward,
SGD step) and inference to final detections, interleaved so that load on a shared machine hits
both sides alike; median of --steps after --warmup. Prints times, images/s, peak memory per step on
CUDA and, on CUDA, the achieved TFLOP/s of our training step against the device's bf16 peak. The
last two lines are ``train_speedup_vs_torchvision: X.XX`` and ``infer_speedup_vs_torchvision: Y.YY``.

    python tools/bench_model.py                                   # CPU-friendly: batch 2, 320x480
    python tools/bench_model.py --device cuda --batch 8 --height 600 --width 1000 --precision bf16
    python tools/bench_model.py --loader 20 --batch 8 dataset=coco dataset.root=../shared/data/coco_tiny
    python tools/bench_model.py --flops --height 600 --width 1000 --batch 1   # what ours costs

``--flops`` builds only our model and prints its forward GFLOPs (torch.utils.flop_counter: a
multiply-add counts 2) and parameters per stage, with the RoI head at the configured test-time
count of RoIs, then the FLOPs, time and achieved GFLOP/s of one training step (median of --steps)
and their share of the CPU's nominal fp32 peak where it can be reckoned (detector/benchmark/flops.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from detector.benchmark import (  # noqa: E402
    BenchSettings,
    bf16_peak_tflops,
    build_ours,
    build_torchvision,
    copy_weights,
    count_flops,
    count_model_flops,
    cpu_peak_gflops,
    dense_roi_align,
    interleaved_times,
    loader_images_per_second,
    make_optimizer,
    make_steps,
    parameter_counts,
    resident_bytes,
    synthetic_batch,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    parser.add_argument("--channels-last", action="store_true", help="both models and images")
    parser.add_argument("--compile", action="store_true", help="ours with model.compile=true")
    parser.add_argument("--compact", choices=("auto", "on", "off"), default="auto",
                        help="our ROI compaction (auto: on the CPU only)")
    parser.add_argument("--roi-align", choices=("auto", "sparse", "torchvision"), default="auto",
                        help="our RoIAlign backend (auto: sparse product on the CPU only)")
    parser.add_argument("--no-fold-bn", action="store_true",
                        help="ours without BN folded into the convs at inference")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device bf16 peak (default: looked up by CUDA device name)")
    parser.add_argument("--loader", type=int, default=0, metavar="BATCHES",
                        help="only time the training data loader over this many batches")
    parser.add_argument("--flops", action="store_true",
                        help="only our model (fp32): GFLOPs and parameters per stage, GFLOP/s of training")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="--flops: the device's fp32 peak (default: reckoned on a CPU)")
    parser.add_argument("--verbose", action="store_true", help="print every timed step")
    parser.add_argument("overrides", nargs="*", help="config overrides for --loader's dataset")
    return parser.parse_args()


def loader_figure(args: argparse.Namespace) -> str:
    """Images/s of the training loader that configs/train.yaml (+ overrides) builds."""
    import hydra
    from hydra import compose, initialize_config_dir

    from detector.data import build_dataloader
    from detector_cli.cli import quote_path_overrides

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=quote_path_overrides(list(args.overrides)))
    dataset = hydra.utils.instantiate(cfg.dataset.train)
    loader = build_dataloader(dataset=dataset, batch_size=args.batch, train=True,
                              num_workers=cfg.num_workers, seed=cfg.seed)
    rate = loader_images_per_second(loader, batches=args.loader)
    return (f"loader: {rate:.1f} images/s (dataset {cfg.dataset.name}, batch {args.batch}, "
            f"{cfg.num_workers} workers, pin_memory {loader.pin_memory})")


def flops_line(fn, seconds: float, device: torch.device, peak: float | None) -> str:
    flops = count_flops(fn)
    achieved = flops / seconds / 1e12
    name = torch.cuda.get_device_name(device)
    peak = peak or bf16_peak_tflops(name)
    share = f"{100 * achieved / peak:.1f}% of {name}'s {peak:.0f} TFLOP/s bf16 peak" if peak else (
        f"bf16 peak of {name} unknown: pass --peak-tflops")
    return f"ours train: {flops / 1e9:.1f} GFLOP/step, {achieved:.1f} TFLOP/s achieved, {share}"


def _train_step(model, criterion, data):
    optimizer = make_optimizer(model)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        sum(criterion(model(data.images, data.image_sizes, data.targets), data.targets).values(
            )).backward()
        optimizer.step()

    return step


def flops_report(args: argparse.Namespace, settings: BenchSettings, device: torch.device) -> None:
    """``--flops``: the cost table of our model, then its training step's achieved rate."""
    model, criterion = build_ours(settings)
    model = model.to(device)
    data = synthetic_batch(batch=args.batch, height=args.height, width=args.width,
                           num_classes=args.num_classes, device=device, seed=args.seed)
    rois = model.proposal_generator.post_nms_top_n[1]  # test-time proposals kept per image
    flops = count_model_flops(model, data.images, data.image_sizes, rois_per_image=rois)
    params = parameter_counts(model)
    print(f"forward, eval mode, batch {args.batch}, {args.height}x{args.width}, "
          f"{args.num_classes} classes, RoI head at {rois} RoIs/image (the configured test-time "
          f"post-NMS count); FLOPs by torch.utils.flop_counter (multiply-add = 2; BN, pooling, "
          f"RoIAlign sampling and NMS count 0)")
    print(f"{'part':<10}{'GFLOPs':>12}{'params (M)':>12}")
    for part in ("backbone", "rpn", "roi_head", "other", "total"):
        print(f"{part:<10}{flops[part] / 1e9:>12.2f}{params[part] / 1e6:>12.3f}")
    step = _train_step(model, criterion, data)
    with dense_roi_align(model):  # forward + losses + backward (+ SGD: 0 FLOPs) of one step
        step_flops = count_flops(step)
    seconds = interleaved_times({"train": step}, steps=args.steps, warmup=args.warmup,
                                device=device)["train"].median
    achieved = step_flops / seconds / 1e9
    print(f"train step: {step_flops / 1e9:.2f} GFLOP, {seconds:.4f} s (median of {args.steps}), "
          f"{achieved:.1f} GFLOP/s achieved ({device.type}, {torch.get_num_threads()} threads)")
    if args.peak_gflops:
        print(f"peak: {args.peak_gflops:.1f} GFLOP/s (--peak-gflops); "
              f"{100 * achieved / args.peak_gflops:.1f}% of it")
        return
    peak = cpu_peak_gflops(torch.get_num_threads()) if device.type == "cpu" else None
    if peak is None or peak.gflops is None:
        print(f"peak: {peak.assumption if peak else 'unknown (pass --peak-gflops)'}")
        return
    print(f"peak: {peak.gflops:.1f} GFLOP/s fp32 = {peak.assumption}; "
          f"{100 * achieved / peak.gflops:.1f}% of it")


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if args.loader:  # the loader alone: no models
        print(loader_figure(args))
        return
    torch.manual_seed(args.seed)
    compact = {"auto": None, "on": True, "off": False}[args.compact]
    settings = BenchSettings(height=args.height, width=args.width, num_classes=args.num_classes,
                             compact_rois=compact, compile=args.compile,
                             roi_align_backend=args.roi_align, fold_bn=not args.no_fold_bn)
    if args.flops:
        flops_report(args, settings, device)
        return
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    ours, criterion = build_ours(settings)
    tv_model = build_torchvision(settings)
    copy_weights(ours, tv_model)  # the same features and proposals: the same work
    ours, tv_model = ours.to(device, memory_format=fmt), tv_model.to(device, memory_format=fmt)
    data = synthetic_batch(batch=args.batch, height=args.height, width=args.width,
                           num_classes=args.num_classes, device=device, seed=args.seed,
                           memory_format=fmt)
    steps, optimizers = make_steps(ours=ours, criterion=criterion, torchvision_model=tv_model,
                                   data=data, precision=args.precision)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{torch.get_num_threads()} threads")
    print(f"{device.type} ({where}), {args.precision}, batch {args.batch}, "
          f"{args.height}x{args.width}, {args.num_classes} classes; median of {args.steps} steps "
          f"after {args.warmup} warm-up, interleaved; channels_last={args.channels_last} "
          f"compile={args.compile} compact={args.compact} roi_align={args.roi_align} "
          f"fold_bn={not args.no_fold_bn}")
    times = interleaved_times(steps, steps=args.steps, warmup=args.warmup, device=device,
                              progress=print if args.verbose else None)
    cuda = device.type == "cuda"
    print(f"{'step':<8}{'ours s':>10}{'torchvision s':>15}{'speedup':>9}{'ours img/s':>12}"
          f"{'tv img/s':>10}" + (f"{'ours GB':>9}{'tv GB':>8}" if cuda else ""))
    speedups = {}
    for kind in ("train", "infer"):
        mine, theirs = times[f"ours_{kind}"], times[f"torchvision_{kind}"]
        speedups[kind] = theirs.median / mine.median
        line = (f"{kind:<8}{mine.median:>10.4f}{theirs.median:>15.4f}{speedups[kind]:>8.2f}x"
                f"{args.batch / mine.median:>12.2f}{args.batch / theirs.median:>10.2f}")
        if cuda:  # the step's own peak plus what the model keeps between steps
            held = {m: resident_bytes(model, optimizers[m] if kind == "train" else None)
                    for m, model in (("ours", ours), ("torchvision", tv_model))}
            line += (f"{(mine.peak_extra_bytes + held['ours']) / 1e9:>9.2f}"
                     f"{(theirs.peak_extra_bytes + held['torchvision']) / 1e9:>8.2f}")
        print(line)
    if cuda:
        print(flops_line(steps["ours_train"], times["ours_train"].median, device, args.peak_tflops))
    print(f"train_speedup_vs_torchvision: {speedups['train']:.2f}")
    print(f"infer_speedup_vs_torchvision: {speedups['infer']:.2f}")


if __name__ == "__main__":
    main()
