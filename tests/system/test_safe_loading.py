"""A checkpoint (or an exported ONNX file) is data, never code (issue 19, part 1).

Each attack is a checkpoint crafted here from the tiny one: the write-then-import chain
(``torchvision.io.write_file`` writes ``detector/<name>.py``, ``detector.<name>.run`` imports
it), ``os.system``, a tensor inside the description, a pretrained-weights name nested in a list,
and a ``dataset.val`` payload meant for the web samples. Each is refused by the library route
(``read_checkpoint``, ``Predictor.from_checkpoint``, ``export_checkpoint``, ``sample_images``) and
by every tool's ``main`` in process (predict, serve, export, eval, inspect_model): one line on
stderr naming the file and the refused key, exit code 2, and nothing executed (no marker file, no
module written, no download). Two subprocesses check the same through a real command line.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from helpers.load_file import load_tool
from hydra import compose, initialize_config_dir
from onnx import TensorProto, helper

import detector
from detector.data import SHAPES_CLASS_NAMES, generate_shapes_dataset
from detector.modeling.spec import SpecError, read_checkpoint
from detector.predict.onnx_export import export_checkpoint
from detector.predict.onnx_predictor import OnnxModelError, OnnxPredictor
from detector.predict.predictor import Predictor
from detector.web import sample_images

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLS = PROJECT_ROOT / "tools"
PACKAGE = Path(detector.__file__).parent
ATTACKS = ["write_then_import", "os_system", "tensor", "nested_weights", "dataset_val"]
REFUSED = {  # what the one line names, for each attack
    "write_then_import": "model.backbone._target_ 'torchvision.io.write_file' is not a detector "
                         "constructor",
    "os_system": "model.backbone._target_ 'os.system' is not a detector constructor",
    "tensor": "model.box_head.hidden_dim is a Tensor",
    "nested_weights": "the model description does not build",
    "dataset_val": "dataset.val._target_ 'detector._pwned_",
}


def _shapes_val(root: Path) -> dict:
    return {"_target_": "detector.data.ShapesDetection", "root": str(root), "split": "val",
            "num_train": 1, "num_val": 2, "image_size": 64,
            "transforms": {"_target_": "detector.data.build_transforms", "train": False,
                           "min_size": 64, "max_size": 64}}


def _craft(tiny_checkpoint: Path, folder: Path, attack: str) -> tuple[Path, list[Path]]:
    """A copy of the tiny checkpoint (shapes classes, a real shapes val split) carrying
    ``attack``; returns its path and the files that must never appear."""
    state = copy.deepcopy(torch.load(tiny_checkpoint, weights_only=True))
    state["class_names"] = list(SHAPES_CLASS_NAMES)
    state["config"]["dataset"]["val"] = _shapes_val(folder / "shapes")
    generate_shapes_dataset(root=folder / "shapes", num_train=1, num_val=2, image_size=64)
    model = state["config"]["model"]
    marker = folder / f"{attack}.marker"
    module = f"_pwned_{uuid.uuid4().hex[:8]}"
    never = [marker, PACKAGE / f"{module}.py"]
    source = f"open({str(marker)!r}, 'w').close()\ndef run(**kwargs):\n    return None\n"
    write = {"_target_": "torchvision.io.write_file", "filename": str(PACKAGE / f"{module}.py"),
             "data": torch.tensor(list(source.encode()), dtype=torch.uint8)}
    if attack == "write_then_import":
        model["backbone"], model["box_head"] = write, {"_target_": f"detector.{module}.run"}
    elif attack == "os_system":
        model["backbone"] = {"_target_": "os.system", "command": f"touch {marker}"}
    elif attack == "tensor":
        model["box_head"]["hidden_dim"] = torch.tensor(32)
    elif attack == "nested_weights":  # built offline (weights stripped), then refused
        model["anchor_sizes"] = [16, [{"_target_": "detector.modeling.backbone.VGG16BNBackbone",
                                       "weights": "IMAGENET1K_V1"}]]
    elif attack == "dataset_val":  # the chain in one node: its argument is built first
        state["config"]["dataset"]["val"] = {"_target_": f"detector.{module}.run",
                                             "transforms": write}
    path = folder / f"{attack}.pth"
    torch.save(state, path)
    return path, never


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail(f"loading a checkpoint attempted a download: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)


@pytest.fixture(params=ATTACKS)
def crafted(request, tiny_checkpoint, tmp_path):
    path, never = _craft(tiny_checkpoint, tmp_path, request.param)
    yield request.param, path, never
    for file in never:
        assert not file.exists(), f"{request.param}: {file} was written"
        file.unlink(missing_ok=True)


def _refused(attack: str, path: Path, message: str) -> None:
    assert message.startswith(f"checkpoint {path}: ") and "\n" not in message.strip(), message
    assert REFUSED[attack] in message, message


# ---------------------------------------------------------------------------- library route
def test_the_library_route_refuses_every_attack(crafted, tmp_path):
    attack, path, _ = crafted
    loaders = [lambda: Predictor.from_checkpoint(path, device="cpu"),
               lambda: export_checkpoint(path, tmp_path / "out.onnx")]
    if attack != "nested_weights":  # that one is plain data: refused when it is built
        loaders.append(lambda: read_checkpoint(path))
    for load in loaders:
        with pytest.raises(SpecError) as info:
            load()
        _refused(attack, path, str(info.value))
    assert not (tmp_path / "out.onnx").exists()


def test_a_dataset_payload_never_reaches_the_web_samples(tiny_checkpoint, tmp_path, caplog):
    """Called directly with the payload, the samples log and show nothing; nothing runs."""
    path, never = _craft(tiny_checkpoint, tmp_path, "dataset_val")
    dataset = torch.load(path, weights_only=True)["config"]["dataset"]
    assert sample_images(dataset) == []
    assert "dataset.val._target_ 'detector._pwned_" in caplog.text
    assert not any(file.exists() for file in never)


# ---------------------------------------------------------------------------- every tool
def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _image(folder: Path) -> Path:
    path = folder / "in" / "one.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((64, 64, 3), np.uint8))
    return path


def _tool_configs(path: Path, tmp_path: Path) -> dict[str, object]:
    image = _image(tmp_path)
    return {
        "predict.py": _compose("predict", [f"checkpoint={path}", f"input={image}", "device=cpu",
                                           f"output={tmp_path / 'out'}", "progress=false"]),
        "serve.py": _compose("serve", [f"checkpoint={path}", "device=cpu", "port=0"]),
        "export.py": _compose("export", [f"checkpoint={path}",
                                         f"output={tmp_path / 'out.onnx'}"]),
        "eval.py": _compose("eval", [f"checkpoint={path}", "device=cpu", "num_workers=0",
                                     "num_visualize=0"]),
        "inspect_model.py": _compose("inspect", [f"checkpoint={path}", "device=cpu",
                                                 "num_images=1",
                                                 f"output_dir={tmp_path / 'inspect'}"]),
    }


def test_every_tool_refuses_every_attack_in_one_line(crafted, tmp_path, capsys):
    attack, path, _ = crafted
    for script, cfg in _tool_configs(path, tmp_path).items():
        main = load_tool(script).main
        with pytest.raises(SystemExit) as info:
            main(cfg)
        err = capsys.readouterr().err
        assert info.value.code == 2, (script, err)
        assert err.count("\n") == 1 and err.startswith("error: "), (script, err)
        _refused(attack, path, err[len("error: "):])
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "inspect").exists()


def _run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(TOOLS / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("script", "attack"), [("predict.py", "write_then_import"),
                                                ("eval.py", "os_system")])
def test_a_real_command_line_exits_2_and_runs_nothing(script, attack, tiny_checkpoint,
                                                      tmp_path):
    """eval.py used to hand the checkpoint's config to hydra.utils.instantiate."""
    path, never = _craft(tiny_checkpoint, tmp_path, attack)
    args = [f"checkpoint={path}", "device=cpu"]
    if script == "predict.py":
        args += [f"input={_image(tmp_path)}", f"output={tmp_path / 'out'}"]
    try:
        done = _run(script, args, tmp_path)
    finally:
        written = [file for file in never if file.exists()]
        for file in written:
            file.unlink()
    assert not written, written
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr
    _refused(attack, path, done.stderr.strip()[len("error: "):])


# ---------------------------------------------------------------------------- ONNX metadata
def _onnx_file(path: Path, metadata: dict[str, str]) -> Path:
    """A valid ONNX model with the inputs and outputs of an export (constant outputs) whose
    metadata_props are ``metadata`` (raw strings)."""
    specs = {"boxes": (TensorProto.FLOAT, ["b", 1, 4]), "scores": (TensorProto.FLOAT, ["b", 1]),
             "labels": (TensorProto.INT64, ["b", 1]), "valid": (TensorProto.BOOL, ["b", 1])}
    nodes = [helper.make_node("Constant", [], [name], value=helper.make_tensor(
        name, kind, [1, 1, 4] if name == "boxes" else [1, 1], [0] * (4 if name == "boxes" else 1)))
        for name, (kind, _) in specs.items()]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, 64, 64]),
                     helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["b", 2])],
        [helper.make_tensor_value_info(name, kind, shape) for name, (kind, shape) in specs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


GOOD = {"detector.class_names": '["a", "b"]', "detector.input_size": "[64, 64]",
        "detector.min_size": "64", "detector.max_size": "64",
        "detector.label_to_cat_id": '{"1": 1, "2": 7}', "detector.iteration": "3"}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("detector.class_names", "[not json", "metadata detector.class_names is not valid JSON"),
    ("detector.class_names", '"ab"', "detector.class_names is malformed"),
    ("detector.class_names", "[1, 2]", "detector.class_names is malformed"),
    ("detector.input_size", "[64]", "detector.input_size is malformed"),
    ("detector.input_size", "[0, 64]", "detector.input_size is malformed"),
    ("detector.input_size", '["64", 64]', "detector.input_size is malformed"),
    ("detector.min_size", '"600"', "detector.min_size is malformed"),
    ("detector.max_size", "-1", "detector.max_size is malformed"),
    ("detector.label_to_cat_id", '{"a": 1}', "detector.label_to_cat_id is malformed"),
    ("detector.label_to_cat_id", "[1]", "detector.label_to_cat_id is malformed"),
    ("detector.iteration", "true", "detector.iteration is malformed"),
])
def test_malformed_onnx_metadata_is_one_line(key, value, message, tmp_path):
    path = _onnx_file(tmp_path / "bad.onnx", {**GOOD, key: value})
    with pytest.raises(OnnxModelError, match=message) as info:
        OnnxPredictor.from_file(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_well_formed_metadata_loads(tmp_path):
    predictor = OnnxPredictor.from_file(_onnx_file(tmp_path / "good.onnx", GOOD))
    assert predictor.class_names == ["a", "b"] and predictor.input_size == (64, 64)
    assert predictor.label_to_cat_id == {1: 1, 2: 7}


def test_predict_with_malformed_onnx_metadata_exits_2(tmp_path, capsys):
    path = _onnx_file(tmp_path / "bad.onnx", {**GOOD, "detector.input_size": "{}"})
    cfg = _compose("predict", [f"input={_image(tmp_path)}", "backend=onnxruntime",
                               f"onnx={path}", f"output={tmp_path / 'out'}", "progress=false"])
    with pytest.raises(SystemExit) as info:
        load_tool("predict.py").main(cfg)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {path}: metadata detector.input_size is malformed"), err


def test_eval_of_a_checkpoint_whose_dataset_is_elsewhere_is_one_line(tiny_checkpoint, tmp_path,
                                                                      capsys):
    """The checkpoint's own (allowed) dataset, missing on this machine: say where to point."""
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["config"]["dataset"].update(name="coco", val={
        "_target_": "detector.data.CocoDetection", "root": str(tmp_path / "gone"), "split": "v"})
    torch.save(state, tmp_path / "moved.pth")
    cfg = _compose("eval", [f"checkpoint={tmp_path / 'moved.pth'}", "device=cpu"])
    with pytest.raises(SystemExit) as info:
        load_tool("eval.py").main(cfg)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert f"dataset root {tmp_path / 'gone'} does not exist here (dataset=coco)" in err
