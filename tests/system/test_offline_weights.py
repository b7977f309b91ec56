"""``model.backbone.weights=IMAGENET1K_V1`` without a network: ``tools/train_net.py`` prints one
line (what failed, that it needs the network or a local file, where torch caches it), exits 2
and leaves no run folder. The download is made to fail in this process: no real network."""

from __future__ import annotations

import http.client

import pytest
import torch
from helpers.run_tool import run_tool


@pytest.mark.parametrize("failure", [
    http.client.IncompleteRead(b"partial"),  # a download cut short: no OSError
    RuntimeError('invalid hash value (expected "6c64b313", got "0badf00d")'),  # a proxy's page
    OSError("[Errno 101] Network is unreachable"),
])
def test_train_without_network_is_one_line_exit_2_and_no_run_folder(failure, tmp_path,
                                                                   monkeypatch):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    done = run_tool("train_net.py", [
        "model.backbone.weights=IMAGENET1K_V1", "dataset.root=shapes", "dataset.num_train=4",
        "dataset.num_val=2", "dataset.image_size=64", "device=cpu", "num_workers=0",
        "schedule.iterations=2"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: could not download VGG16-BN weights IMAGENET1K_V1 from ")
    assert "model.backbone.weights=/path/to/vgg16_bn-6c64b313.pth" in line
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in line
    assert "Error executing job" not in done.stdout + done.stderr
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not any(outputs.rglob("*")), sorted(outputs.rglob("*"))
