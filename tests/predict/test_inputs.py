"""Resolving tools/predict.py's input (detector/predict/inputs.py) and reading video frames."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.predict.inputs import InputError, collect_inputs, read_video_batches, video_info


@pytest.fixture
def folder(tmp_path) -> Path:
    """a.jpg, b.png, sub/deeper/c.JPG, notes.txt, broken.jpg, .hidden/d.png, clip.avi."""
    root = tmp_path / "in"
    for name in ("a.jpg", "b.png", "sub/deeper/c.JPG", ".hidden/d.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.full((8, 8, 3), 100, np.uint8))
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "clip.avi").write_bytes(b"")
    return root


def test_folder_is_searched_recursively_and_sorted(folder):
    inputs = collect_inputs(folder)
    names = [inputs.relative(p).as_posix() for p in inputs.images]
    assert names == ["a.jpg", "b.png", "broken.jpg", "sub/deeper/c.JPG"]  # hidden folder left out
    assert [p.name for p in inputs.videos] == ["clip.avi"]
    assert inputs.skipped == [("notes.txt", "not an image or video file")]


def test_video_suffixes_in_upper_case_are_videos(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("CLIP.MP4", "Holiday.Mov", "b.avi"):
        (root / name).write_bytes(b"")
    inputs = collect_inputs(root)
    assert [p.name for p in inputs.videos] == ["CLIP.MP4", "Holiday.Mov", "b.avi"]
    assert inputs.images == [] and inputs.skipped == []
    single = collect_inputs(root / "CLIP.MP4")  # named on its own: still a video, not an image
    assert single.videos == [root / "CLIP.MP4"] and single.images == []


def test_glob_and_single_file(folder):
    inputs = collect_inputs(f"{folder}/**/*.JPG")
    assert [inputs.relative(p).as_posix() for p in inputs.images] == ["sub/deeper/c.JPG"]
    assert inputs.root == folder
    single = collect_inputs(folder / "notes.txt")  # a named file is tried as an image
    assert single.images == [folder / "notes.txt"] and single.relative(single.images[0]) == \
        Path("notes.txt")


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "does not exist"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no images or videos"),
    (lambda tmp: f"{tmp}/*.png", "no files match"),
])
def test_nothing_to_predict_on_is_one_clear_error(tmp_path, make, message):
    with pytest.raises(InputError, match=message) as caught:
        collect_inputs(make(tmp_path))
    assert "\n" not in str(caught.value)


def test_video_frames_come_in_batches_as_rgb(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for i in range(7):  # BGR frames: blue rises, red stays 0
        writer.write(np.dstack([np.full((24, 32), 30 * i, np.uint8), np.zeros((24, 32, 2),
                                                                              np.uint8)]))
    writer.release()
    info = video_info(path)
    assert (info.width, info.height, info.frames) == (32, 24, 7) and info.fps == pytest.approx(5)
    batches = list(read_video_batches(path, 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    frames = [f for b in batches for f in b]
    assert frames[0].shape == (24, 32, 3)
    blue = [float(f[..., 2].mean()) for f in frames]  # RGB: blue is the last channel
    assert blue == sorted(blue) and blue[-1] > 150 and frames[-1][..., 0].mean() < 10
    assert video_info(tmp_path / "missing.mp4") is None


def test_broken_links_and_fifos_are_named_among_the_skipped(folder):
    os.symlink(folder / "gone.png", folder / "dangling.png")
    os.mkfifo(folder / "pipe.jpg")  # never opened: reading it would block
    expected = {"dangling.png": "broken symbolic link", "pipe.jpg": "FIFO"}
    for inputs in (collect_inputs(folder), collect_inputs(f"{folder}/*.*")):
        skipped = dict(inputs.skipped)
        for name, reason in expected.items():
            assert reason in skipped[name]
        assert {"dangling.png", "pipe.jpg"}.isdisjoint(p.name for p in inputs.images)
    for name, reason in expected.items():  # named on the command line: one clear error
        with pytest.raises(InputError, match=reason):
            collect_inputs(folder / name)
