"""tools/predict.py and tools/export.py: runs on a tiny checkpoint, in process through the tools'
``main`` (fast) plus one subprocess for the one-line exit-2 path; the real export -> onnxruntime
prediction round trip (export.py in a new interpreter, predict.py's command line in process) is
marked slow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.load_file import load_tool
from helpers.run_tool import run_tool
from hydra import compose, initialize_config_dir

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLS = PROJECT_ROOT / "tools"


def _tool_module(script: str):
    return load_tool(script)


def _tool(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(TOOLS / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def config():
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        yield lambda name, overrides: compose(name, overrides=overrides)


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    (root / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("one.png", "nested/two.jpg"):
        cv2.imwrite(str(root / name), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (root / "bad.png").write_bytes(b"\x89PNG broken")
    return root


def _exits_2(main, cfg, capsys, text: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(cfg)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and text in err and "\n" not in err, err


def test_predict_folder_with_the_newest_checkpoint(config, tiny_checkpoint, images, tmp_path,
                                                   capsys):
    runs = tmp_path / "outputs"  # an outputs_root holding only <run>/checkpoints/final.pth
    checkpoint = runs / "run" / "checkpoints" / "final.pth"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, checkpoint)
    cfg = config("predict", [f"input={images}", f"outputs_root={runs}", "min_score=0.05",
                             f"output={tmp_path / 'out'}", "progress=false", "precision=fp32"])
    _tool_module("predict.py").main(cfg)
    out = capsys.readouterr().out
    assert "2 images" in out and "bad.png" in out and str(tmp_path / "out") in out
    assert "note: min_score" not in out  # 0.05 is the tiny model's own threshold
    document = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert document["model"] == str(checkpoint)
    assert [e["file"] for e in document["images"]] == ["nested/two.jpg", "one.png"]
    assert (tmp_path / "out" / "nested" / "two.jpg").is_file()


def test_predict_says_once_when_min_score_is_below_the_models_threshold(
        config, tiny_checkpoint, images, tmp_path, capsys):
    cfg = config("predict", [f"input={images}", f"checkpoint={tiny_checkpoint}", "min_score=0.01",
                             f"output={tmp_path / 'out'}", "progress=false", "precision=fp32"])
    _tool_module("predict.py").main(cfg)
    out = capsys.readouterr().out
    assert out.count("note: min_score 0.01 is below the model's own score_threshold 0.05") == 1


def test_predict_user_errors_are_one_line(config, images, tmp_path, capsys):
    main = _tool_module("predict.py").main
    (tmp_path / "empty").mkdir()
    _exits_2(main, config("predict", [f"input={tmp_path / 'empty'}"]), capsys,
             "no images or videos in")
    _exits_2(main, config("predict", []), capsys, "input=PATH is required")
    _exits_2(main, config("predict", [f"input={images}", f"checkpoint={tmp_path / 'no.pth'}"]),
             capsys, "no.pth does not exist")
    _exits_2(main, config("predict", [f"input={images}", f"outputs_root={tmp_path / 'empty'}"]),
             capsys, "no checkpoint found under")
    _exits_2(main, config("predict", [f"input={images}", "backend=onnxruntime",
                                      f"onnx={tmp_path / 'no.onnx'}"]), capsys,
             "no.onnx does not exist")


def test_export_user_errors_are_one_line(config, tiny_checkpoint, tmp_path, capsys):
    main = _tool_module("export.py").main
    _exits_2(main, config("export", [f"checkpoint={tmp_path / 'no.pth'}"]), capsys,
             "no.pth does not exist")
    _exits_2(main, config("export", [f"checkpoint={tiny_checkpoint}", "height=50"]), capsys,
             "multiples of 16")


def test_missing_input_exits_2_with_one_line(tmp_path):
    result = _tool("predict.py", [f"input={tmp_path / 'nowhere'}"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'} does not exist (expected an image, a folder, a glob or "
        f"a video)"]


@pytest.mark.slow
def test_export_then_predict_with_onnxruntime(tiny_checkpoint, images, tmp_path):
    model = tmp_path / "tiny.onnx"
    exported = _tool("export.py", [f"checkpoint={tiny_checkpoint}", f"output={model}"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert model.is_file() and str(model) in exported.stdout
    predicted = run_tool("predict.py", [f"input={images}", "backend=onnxruntime", f"onnx={model}",
                                        f"output={tmp_path / 'out'}", "min_score=0.05"],
                         cwd=tmp_path)  # in process: predict.py's command line is the test above
    assert predicted.returncode == 0, predicted.stderr
    document = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert document["backend"] == "onnxruntime" and len(document["images"]) == 2
    assert all(entry["detections"] for entry in document["images"])


def test_predict_refuses_a_folder_named_detections_json_up_front(config, tiny_checkpoint, images,
                                                                 tmp_path, capsys, monkeypatch):
    """Checked before the model loads: nothing is predicted, then lost at the last write."""
    (tmp_path / "out" / "detections.json").mkdir(parents=True)
    monkeypatch.setattr("detector.predict.predictor.Predictor.from_checkpoint",
                        lambda *a, **k: pytest.fail("the model must not load"))
    _exits_2(_tool_module("predict.py").main,
             config("predict", [f"input={images}", f"checkpoint={tiny_checkpoint}",
                                f"output={tmp_path / 'out'}"]),
             capsys, "holds detections.json, which is a folder")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["detections.json"]


@pytest.mark.parametrize(("change", "message"), [
    ({"max_size": 60000}, "max_size"), ({"min_size": 10**400}, "min_size"),
    ({"label_to_cat_id": {"\u00b2": 1}}, "label_to_cat_id"),
])
def test_export_of_a_hostile_checkpoint_is_one_line_and_writes_nothing(
        config, tiny_checkpoint, tmp_path, capsys, monkeypatch, change, message):
    import torch

    from detector.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(tiny_checkpoint)
    if "label_to_cat_id" in change:
        state.update(change)
    else:
        state["config"]["dataset"].update(change)
    save_checkpoint(tmp_path / "ckpt" / "final.pth", state)
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("nothing to trace"))
    _exits_2(_tool_module("export.py").main,
             config("export", [f"checkpoint={tmp_path / 'ckpt' / 'final.pth'}"]), capsys, message)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["final.pth"]
