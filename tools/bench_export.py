"""Latency per image: onnxruntime (the exported graph) against PyTorch on the CPU, side by side.

Loads a checkpoint with ``Predictor`` (fp32, and the ``precision=auto`` choice when it differs)
and its exported ``.onnx`` with ``OnnxPredictor`` (written first when missing), then times, on the
same decoded images, with the same number of threads, interleaving the backends run by run:

- ``predict``: the whole call, ``predictor(arrays)`` (preprocessing, network, post-processing);
- ``network``: the graph alone on the same padded input (``DetectionGraph`` vs ``session.run``).

Prints a markdown table of median milliseconds per image; the last line is
``onnxruntime_vs_torch_fp32: X.XX`` (the speed-up of the whole call at the largest batch).

    python tools/bench_export.py --input datasets/shapes/val --batch-sizes 1 8 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from detector.checkpoint import find_latest_checkpoint
from detector.data import DatasetError
from detector.predict.inputs import collect_inputs
from detector.predict.onnx_export import DetectionGraph, export_checkpoint
from detector.predict.onnx_predictor import OnnxPredictor
from detector.predict.predictor import Predictor, load_image


def timed(tasks: dict, runs: int) -> dict:
    """name -> (fn, batches) to name -> median ms per image; the tasks take turns run by run, so
    a busy moment of a shared machine hits them all."""
    for fn, batches in tasks.values():
        fn(batches[0])  # warm-up (allocations, onnxruntime's first-run planning)
    samples: dict = {name: [] for name in tasks}
    for _ in range(runs):
        for name, (fn, batches) in tasks.items():
            start = time.perf_counter()
            count = sum(len(fn(batch)) for batch in batches)
            samples[name].append((time.perf_counter() - start) * 1000 / count)
    return {name: statistics.median(values) for name, values in samples.items()}


def backends(checkpoint: Path, onnx: Path, threads: int) -> dict:
    """name -> (predictor, network function on the preprocessed feeds)."""
    out = {}
    ort = OnnxPredictor.from_file(onnx, num_threads=threads)
    for precision in dict.fromkeys(("fp32", "auto")):
        predictor = Predictor.from_checkpoint(checkpoint, device="cpu", precision=precision)
        if precision == "auto" and predictor.precision == "fp32":
            continue
        graph = DetectionGraph(predictor.model).eval()

        def network(feeds, graph=graph, predictor=predictor):
            from detector.runtime import autocast

            with torch.no_grad(), autocast(predictor.device, predictor.precision):
                return graph(*(torch.from_numpy(v) for v in feeds.values()))[0]

        out[f"torch {predictor.precision}"] = (predictor, network)
    out["onnxruntime"] = (ort, lambda feeds: ort.session.run(None, feeds)[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="default: newest outputs/**/checkpoints/final.pth")
    parser.add_argument("--onnx", type=Path, default=None, help="default: beside the checkpoint")
    parser.add_argument("--input", default="datasets/shapes/val", help="images to run on")
    parser.add_argument("--max-images", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    checkpoint = args.checkpoint or find_latest_checkpoint("outputs")
    if checkpoint is None:
        parser.error("no checkpoint under outputs/; pass --checkpoint")
    onnx = args.onnx or checkpoint.with_suffix(".onnx")
    if not onnx.is_file():
        export_checkpoint(checkpoint, onnx)
    torch.set_num_threads(args.threads)
    arrays = []
    for path in collect_inputs(args.input).images:
        try:
            arrays.append(load_image(path))
        except DatasetError:
            continue  # a benchmark needs images, not a report of the bad ones
        if len(arrays) == args.max_images:
            break
    runners = backends(checkpoint, onnx, args.threads)
    ort = runners["onnxruntime"][0]
    print(f"{checkpoint}, {len(arrays)} images, input {ort.input_size}, {args.threads} threads, "
          f"median of {args.runs} runs, ms per image")
    print("| batch | " + " | ".join(f"{n} predict | {n} network" for n in runners) + " |")
    print("|---" * (1 + 2 * len(runners)) + "|")
    speedup = 0.0
    for size in args.batch_sizes:
        batches = [arrays[i:i + size] for i in range(0, len(arrays), size)]
        feeds = [ort.preprocess(b)[0] for b in batches]
        tasks = {}
        for name, (predictor, network) in runners.items():
            tasks[name, "predict"] = (
                lambda b, p=predictor: p.predict_arrays(b), batches)
            tasks[name, "network"] = (network, feeds)
        ms = timed(tasks, args.runs)
        row = {name: (ms[name, "predict"], ms[name, "network"]) for name in runners}
        print(f"| {size} | " + " | ".join(f"{p:.1f} | {n:.1f}" for p, n in row.values()) + " |")
        speedup = row["torch fp32"][0] / row["onnxruntime"][0]
    print(f"onnxruntime_vs_torch_fp32: {speedup:.2f}")


if __name__ == "__main__":
    main()
