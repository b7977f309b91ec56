"""tools/train_net.py and tools/eval.py for real: tiny runs of whole command lines (end-to-end CE,
4-step, focal; marked slow), each evaluated; checkpoint discovery; bad input ends with exit code 2
and one line (whole command lines, or the other cases through the tools' ``main``).

The command lines run in this process (helpers/run_tool.py) but one, eval.py finding the newest
run, in a new interpreter; test_reliability, test_stopping and test_sweep train in real ones.

Every run shares one generated shapes set (16 + 8 images of 64 px) and a few iterations, so each
takes seconds; a new interpreter spends about as long importing torch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.load_file import load_tool
from helpers.run_tool import run_tool
from hydra import compose, initialize_config_dir

from detector.checkpoint import load_checkpoint
from detector.data import generate_shapes_dataset
from detector.evaluation import STAT_NAMES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLS = PROJECT_ROOT / "tools"
STEPS = ("rpn", "fast_rcnn", "rpn_finetune", "fast_rcnn_finetune")
TINY = ["dataset.num_train=16", "dataset.num_val=8", "dataset.image_size=64",
        "dataset.min_size=64", "dataset.max_size=64", "batch_size=2", "num_workers=0",
        "train.progress=false", "train.eval_batch_size=8"]
RUNS = {
    "end_to_end": ["schedule.iterations=3"],
    "two_stage": ["experiment=two_stage", *(f"schedule.{step}_iterations=2" for step in STEPS)],
    "focal": ["experiment=focal", "schedule.iterations=3"],
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Working directory of every subprocess (nothing is written into the checkout)."""
    return tmp_path_factory.mktemp("tools")


@pytest.fixture(scope="module")
def shapes_root(workdir) -> Path:
    return generate_shapes_dataset(root=workdir / "shapes", num_train=16, num_val=8,
                                   image_size=64)


def _tool(script: str, args: list[str], workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1",
               OMP_NUM_THREADS="1")  # tiny models: more threads only contend on a shared CPU
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(TOOLS / script), *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)


def _ok(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    return output


def _train(name: str, workdir: Path, shapes_root: Path) -> tuple[Path, str]:
    """The whole command line in this process (helpers/run_tool.py): an interpreter importing torch
    costs more than such a run; the slow tests of test_reliability, test_stopping and test_sweep
    train in real processes."""
    run_dir = workdir / "outputs" / name
    result = run_tool("train_net.py", [f"dataset.root={shapes_root}", *TINY, *RUNS[name],
                                       f"output_dir={run_dir}"], cwd=workdir)
    return run_dir, _ok(result)


@pytest.fixture(scope="module")
def end_to_end_run(workdir, shapes_root):
    return _train("end_to_end", workdir, shapes_root)


@pytest.fixture(scope="module")
def two_stage_run(workdir, shapes_root):
    return _train("two_stage", workdir, shapes_root)


@pytest.fixture(scope="module")
def focal_run(workdir, shapes_root):
    return _train("focal", workdir, shapes_root)


def _records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r], [r for r in lines if "AP" in r]


def _check_run(run_dir: Path, *, iterations: int, phases: list[str]) -> dict:
    """The files every training run writes; returns the checkpoint."""
    state = load_checkpoint(run_dir / "checkpoints" / "final.pth")
    assert {"model", "config", "class_names", "label_to_cat_id", "iteration"} <= state.keys()
    assert state["iteration"] == iterations
    assert state["class_names"] == ["rectangle", "ellipse", "triangle", "star"]
    assert state["config"]["output_dir"] == str(run_dir)

    train, evals = _records(run_dir)
    assert [r["phase"] for r in train] == phases
    assert train[-1]["iter"] == iterations
    for r in train:
        assert {"iter", "phase", "loss", "lr"} <= r.keys()
        terms = [k for k in r if k.startswith("loss_")]
        assert terms and r["loss"] == pytest.approx(sum(r[k] for k in terms))
    assert [(r["iter"], r["phase"]) for r in evals] == [(iterations, phases[-1])]
    assert {"AP", "AP50", "AP75"} <= evals[0].keys()

    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert set(STAT_NAMES) <= final.keys()
    assert final["AP"] == pytest.approx(evals[0]["AP"])
    assert (run_dir / "loss_curves.png").read_bytes().startswith(PNG_MAGIC)
    results = json.loads((run_dir / "final_results.json").read_text())  # tools/analyze.py's
    assert all({"image_id", "category_id", "bbox", "score"} <= r.keys() for r in results)
    assert (run_dir / "train_net.log").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    return state


# ---------------------------------------------------------------------------- training runs
@pytest.mark.slow
def test_end_to_end_run_writes_checkpoint_metrics_and_curves(end_to_end_run):
    run_dir, output = end_to_end_run
    state = _check_run(run_dir, iterations=3, phases=["end_to_end"])
    assert state["config"]["loss"]["name"] == "ce"
    train, _ = _records(run_dir)
    assert {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"} <= train[0].keys()
    assert "evaluate it with: python tools/eval.py checkpoint=" in output
    # the precision it chose, once, and counts in the singular or plural
    assert len(re.findall(r"device cpu x 1 process\(es\), precision (?:bf16|fp32) "
                          r"\(precision=auto\), 3 iterations", output)) == 1
    assert "train: 16 images, 4 classes; " in output


@pytest.mark.slow
def test_two_stage_run_goes_through_the_four_steps(two_stage_run):
    run_dir, output = two_stage_run
    _check_run(run_dir, iterations=8, phases=list(STEPS))
    log = (run_dir / "train_net.log").read_text()
    for index, step in enumerate(STEPS, start=1):
        assert f"phase {index}/4: {step} (2 iterations" in log
        assert f"[{step}] iter 2/2" in log
    train, _ = _records(run_dir)
    assert [r["iter"] for r in train] == [2, 4, 6, 8]
    for r in train:
        rpn = r["phase"].startswith("rpn")
        assert ("loss_rpn_cls" in r) == rpn and ("loss_cls" in r) != rpn


@pytest.mark.slow
def test_focal_run_trains_with_focal_losses(focal_run):
    run_dir, _ = focal_run
    state = _check_run(run_dir, iterations=3, phases=["end_to_end"])
    criterion = state["config"]["loss"]["criterion"]
    assert criterion["rpn_cls_loss"]["_target_"] == "detector.ops.losses.SigmoidFocalLoss"
    assert criterion["roi_cls_loss"]["_target_"] == "detector.ops.losses.SoftmaxFocalLoss"
    assert state["config"]["model"]["rpn_objectness_prior"] == pytest.approx(0.01)


# ---------------------------------------------------------------------------- evaluation
def _check_eval(checkpoint: Path, annotations: Path, num_images: int, count: int) -> None:
    """What eval.py writes beside ``checkpoint`` for the split whose GT is ``annotations``."""
    split = annotations.stem.removeprefix("instances_")
    gt = json.loads(annotations.read_text())
    image_ids = {image["id"] for image in gt["images"]}
    stem = f"{checkpoint.stem}_{split}"
    metrics = json.loads((checkpoint.parent / f"{stem}_metrics.json").read_text())
    assert set(STAT_NAMES) <= metrics.keys()
    assert metrics["num_images"] == num_images == len(image_ids)
    results = json.loads((checkpoint.parent / f"{stem}_results.json").read_text())
    assert results  # an untrained model still scores every class above 0.05
    assert {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]}
    assert {r["image_id"] for r in results} <= image_ids
    assert all(len(r["bbox"]) == 4 and 0.0 <= r["score"] <= 1.0 for r in results)
    pngs = sorted((checkpoint.parent / f"{stem}_detections").glob("*.png"))
    assert len(pngs) == count
    assert {int(p.stem) for p in pngs} <= image_ids
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["end_to_end_run", "two_stage_run"])
def test_eval_of_a_run(run, request, workdir, shapes_root):
    run_dir, _ = request.getfixturevalue(run)
    checkpoint = run_dir / "checkpoints" / "final.pth"
    output = _ok(run_tool("eval.py", [f"checkpoint={checkpoint}", "num_workers=0", "batch_size=8",
                                      "num_visualize=3"], cwd=workdir))
    _check_eval(checkpoint, shapes_root / "annotations" / "instances_val.json", num_images=8,
                count=3)
    assert "Average Precision" in output
    assert "rectangle" in output  # the per-class table


@pytest.mark.slow
def test_eval_without_checkpoint_evaluates_the_newest_run(end_to_end_run, two_stage_run,
                                                          focal_run, workdir, shapes_root):
    """The focal run's evaluation, found as the newest final.pth under outputs_root (eval.py's
    real command line, in a new interpreter)."""
    newest = focal_run[0] / "checkpoints" / "final.pth"
    for age, run in enumerate((focal_run, end_to_end_run, two_stage_run)):
        mtime = 2_000_000_000 - 100 * age  # focal newest, whatever order the runs finished in
        os.utime(run[0] / "checkpoints" / "final.pth", (mtime, mtime))
    output = _ok(_tool("eval.py", [f"outputs_root={workdir / 'outputs'}", "num_workers=0",
                                   "batch_size=8", "num_visualize=2"], workdir))
    assert f"evaluating {newest} on shapes (val split, 8 images)" in output
    assert f"checkpoint: newest finished, evaluated run: {newest} (AP50 " in output
    _check_eval(newest, shapes_root / "annotations" / "instances_val.json", num_images=8,
                count=2)


# ---------------------------------------------------------------------------- bad input
def _one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-4000:]
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and result.stderr.strip() == lines[0], output
    assert lines[0].startswith("error: ") and text in lines[0]


def test_train_bad_value_exits_2_with_one_line(workdir, shapes_root):
    result = run_tool("train_net.py", [f"dataset.root={shapes_root}", *TINY, "batch_size=0",
                                       f"output_dir={workdir / 'bad'}"], cwd=workdir)
    _one_line_error(result, "batch_size must be a positive integer, got 0")


def test_unknown_key_fails_with_hydras_message(workdir):
    result = run_tool("train_net.py", ["foo=1", f"output_dir={workdir / 'unknown'}"], cwd=workdir)
    assert result.returncode != 0
    assert "Could not override 'foo'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# ------------------------------------------------- error handling of main() (in process: fast)
def _tool_main(script: str):
    """The tool's ``@hydra.main`` function; called with a composed config it runs without Hydra
    (no logging setup, no run directory)."""
    return load_tool(script).main


@pytest.fixture(scope="module")
def tool_config():
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        yield lambda name, overrides: compose(name, overrides=overrides)


def _exits_2(main, cfg, capsys, text: str) -> None:
    """``main(cfg)`` exits with code 2 and one line on stderr holding ``text``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(cfg)
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip("\n").split("\n")
    assert line.startswith("error: ") and text in line


BAD_TRAIN = [
    ("precision=fp8", "precision must be auto, fp32, bf16 or fp16, got 'fp8'"),
    ("schedule.iterations=0", "schedule.iterations must be a positive integer"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be a positive integer"),
    ("train.divergence_factor=1", "train.divergence_factor must be a number > 1 (or None: off)"),
    ("train.divergence_window=-1", "train.divergence_window must be an integer >= 0"),
]
if not torch.cuda.is_available():
    BAD_TRAIN.append(("device=cuda", "CUDA is not available"))


@pytest.mark.parametrize(("override", "text"), BAD_TRAIN)
def test_train_main_reports_bad_values(override, text, tool_config, shapes_root, workdir, capsys):
    cfg = tool_config("train", [f"dataset.root={shapes_root}", *TINY, override,
                                f"output_dir={workdir / 'never'}"])
    _exits_2(_tool_main("train_net.py"), cfg, capsys, text)
    assert not (workdir / "never" / "checkpoints").exists()


def test_train_main_reports_a_missing_dataset_root(tool_config, workdir, capsys):
    cfg = tool_config("train", ["dataset=coco", f"dataset.root={workdir / 'no_coco'}",
                                f"output_dir={workdir / 'never'}"])
    _exits_2(_tool_main("train_net.py"), cfg, capsys, "no_coco does not exist")


def test_eval_main_reports_a_missing_or_corrupt_checkpoint(tool_config, workdir, capsys):
    main = _tool_main("eval.py")
    (workdir / "empty").mkdir(exist_ok=True)
    _exits_2(main, tool_config("eval", [f"outputs_root={workdir / 'empty'}"]), capsys,
             "no checkpoint found under")
    _exits_2(main, tool_config("eval", [f"checkpoint={workdir / 'missing.pth'}"]), capsys,
             "missing.pth does not exist")
    corrupt = workdir / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    _exits_2(main, tool_config("eval", [f"checkpoint={corrupt}"]), capsys,
             "could not read checkpoint")
