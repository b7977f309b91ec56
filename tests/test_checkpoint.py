"""Checkpoints: round trip, atomic replacement, safe loading, finding the newest run."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from detector import checkpoint as ckpt
from detector.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _payload(value: float = 1.0) -> dict:
    return {
        "model": nn.Linear(3, 2).state_dict() | {"marker": torch.tensor([value])},
        "config": {"model": {"anchor_sizes": [16, 32]}, "name": "ce_end_to_end", "lr": 0.02,
                   "clip": None},
        "class_names": ["rectangle", "ellipse"],
        "label_to_cat_id": {1: 5, 2: 17},
        "iteration": 42,
    }


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    payload = _payload()
    path = save_checkpoint(tmp_path / "checkpoints" / "final.pth", payload)
    assert path == tmp_path / "checkpoints" / "final.pth"
    loaded = load_checkpoint(path)
    assert loaded.keys() == payload.keys()
    for key, tensor in payload["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    for key in ("config", "class_names", "label_to_cat_id", "iteration"):
        assert loaded[key] == payload[key]
    assert list(tmp_path.joinpath("checkpoints").iterdir()) == [path]  # no temp file left


def test_loaded_state_dict_restores_a_module(tmp_path):
    source, target = nn.Linear(4, 3), nn.Linear(4, 3)
    save_checkpoint(tmp_path / "m.pth", {"model": source.state_dict()})
    target.load_state_dict(load_checkpoint(tmp_path / "m.pth")["model"])
    assert torch.equal(target.weight, source.weight)
    assert torch.equal(target.bias, source.bias)


def test_failed_save_leaves_the_old_file_intact_and_no_partial_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "final.pth", _payload(1.0))
    old_bytes = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _payload(2.0))
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert torch.equal(load_checkpoint(path)["model"]["marker"], torch.tensor([1.0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.pth"]


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # also cleaned up: interrupted runs leave no temp files

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "run" / "final.pth", _payload())
    assert list((tmp_path / "run").iterdir()) == []


def test_saved_file_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "final.pth", _payload())
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_missing_checkpoint_is_a_file_not_found_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")


def test_corrupt_checkpoint_is_one_clear_line(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


class _Payload:  # an arbitrary object: unpickling it could run code
    pass


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_checkpoint(path)


def test_find_latest_checkpoint_picks_the_newest_by_mtime(tmp_path):
    paths = {}
    for name, mtime in (("a", 1_000), ("b", 3_000), ("c", 2_000)):
        paths[name] = tmp_path / "outputs" / name / "2024-01-01" / "checkpoints" / "final.pth"
        paths[name].parent.mkdir(parents=True)
        paths[name].write_bytes(b"x")
        os.utime(paths[name], (mtime, mtime))
    other = tmp_path / "outputs" / "d" / "checkpoints" / "last.pth"  # another name: ignored
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    os.utime(other, (9_000, 9_000))
    assert find_latest_checkpoint(tmp_path / "outputs") == paths["b"]
    os.utime(paths["a"], (4_000, 4_000))
    assert find_latest_checkpoint(tmp_path / "outputs") == paths["a"]
    assert find_latest_checkpoint(tmp_path / "outputs", name="last.pth") == other


def test_find_latest_checkpoint_without_candidates_is_none(tmp_path):
    assert find_latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert find_latest_checkpoint(tmp_path / "empty") is None


def test_resume_in_a_folder_of_only_unreadable_checkpoints_says_so(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    assert find_resume_checkpoint(tmp_path) is None  # no iter_*.pth at all: nothing to resume
    for iteration in (2, 4):
        (directory / f"iter_{iteration:07d}.pth").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="all 2 iter_.*unreadable") as caught:
        find_resume_checkpoint(tmp_path)
    assert "iter_0000004.pth" in str(caught.value) and "\n" not in str(caught.value)
