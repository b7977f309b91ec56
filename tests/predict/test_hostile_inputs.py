"""Prediction on hostile files: symbolic link loops end the search, a PNG declaring 20000 x 20000
pixels is refused from its header, a 2 GiB file is skipped unread, a FIFO does not block, the
output folder cannot be turned against the run (a folder named detections.json, a link out of it),
names are printed escaped, and a checkpoint's sizes and category ids are checked before use."""

from __future__ import annotations

import json
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from helpers.hostile_files import deadline

from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.data.report import DatasetError
from detector.modeling.spec import SpecError
from detector.predict.files import predict_files
from detector.predict.inputs import InputError, Inputs, VideoInfo, collect_inputs, printable
from detector.predict.predictor import Predictor, checkpoint_metrics, load_image


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", batch_size=2)


def _png_header(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` RGB with one tiny IDAT (~70 bytes): a
    decompression bomb as its header shows it."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _image(path, seed: int = 0, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture
def looped(tmp_path):
    """``in/`` with two images and links that loop: ``l1 -> .``, ``l2 -> .`` (2^depth paths for
    glob), ``sub/up -> ..`` and a file-link cycle ``a -> b -> a``."""
    root = tmp_path / "in"
    _image(root / "one.png", 0)
    _image(root / "sub" / "two.png", 1)
    for name, target in (("l1", "."), ("l2", "."), ("sub/up", ".."), ("a", "b"), ("b", "a")):
        os.symlink(target, root / name)
    return root


@pytest.mark.parametrize("pattern", ["{root}/**/*.png", "{root}/**", "{root}/**/*[eo].png"])
def test_a_glob_over_symlink_loops_ends_with_each_image_once(looped, pattern):
    with deadline(20):
        inputs = collect_inputs(pattern.format(root=looped))
    assert sorted(str(inputs.relative(p)) for p in inputs.images) == ["one.png", "sub/two.png"]


def test_each_real_folder_is_searched_once_under_its_shortest_path(looped):
    """``l1/l2/sub/two.png`` is ``sub/two.png`` again: the folder was searched as ``sub``."""
    with deadline(20), pytest.raises(InputError, match="no files match"):
        collect_inputs(f"{looped}/*/*/*/*.png")


def test_a_folder_with_symlink_loops_ends_and_names_the_broken_links(looped):
    with deadline(20):
        inputs = collect_inputs(looped)
    assert sorted(str(inputs.relative(p)) for p in inputs.images) == ["one.png", "sub/two.png"]
    assert {"a", "b"} <= {name for name, _ in inputs.skipped}


def test_a_search_over_too_many_entries_stops_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("detector.predict.inputs.MAX_ENTRIES", 5)
    for i in range(7):
        _image(tmp_path / "in" / f"{i}.png", i, size=8)
    with pytest.raises(InputError, match="more than 5 entries"):
        collect_inputs(tmp_path / "in")


@pytest.mark.parametrize(("width", "height", "message"), [
    (8000, 6000, "8000 x 6000 pixels refused: more than 40 megapixels"),
    (20000, 20000, "image refused: Image size \\(400000000 pixels\\) exceeds limit"),  # Pillow's
])
def test_a_pixel_bomb_is_refused_from_its_header(tmp_path, monkeypatch, width, height, message):
    """~70 bytes that declare 48 or 400 megapixels: refused before OpenCV decodes anything."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(width, height))
    monkeypatch.setattr("detector.predict.image_files.cv2.imdecode",
                        lambda *a, **k: pytest.fail("a bomb must not be decoded"))
    with pytest.raises(DatasetError, match=message):
        load_image(bomb)


def test_a_folder_run_skips_a_bomb_and_a_2_gib_file_with_their_reasons(predictor, tmp_path):
    root = tmp_path / "in"
    _image(root / "ok.png")
    (root / "bomb.png").write_bytes(_png_header(20000, 20000))
    with open(root / "huge.png", "wb") as file:  # sparse: no disk space, never read
        file.truncate(2**31 + 1)
    with deadline(60):
        report = predict_files(predictor, collect_inputs(root), tmp_path / "out", progress=False)
    assert report.images == 1
    reasons = dict(report.skipped)
    assert "400000000 pixels" in reasons["bomb.png"]
    assert reasons["huge.png"] == ("image file huge.png is 2048 MiB, more than the 256 MiB an "
                                   "image may have: not read")


def test_a_fifo_named_as_an_image_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with deadline(10), pytest.raises(DatasetError, match="pipe.png is not a regular file"):
        load_image(tmp_path / "pipe.png")


def _inputs(tmp_path) -> Inputs:
    root = tmp_path / "in"
    _image(root / "a.png")
    return collect_inputs(root)


def test_a_folder_named_detections_json_is_refused_before_anything_is_written(predictor,
                                                                               tmp_path):
    out = tmp_path / "out"
    (out / "detections.json").mkdir(parents=True)
    with pytest.raises(InputError, match="holds detections.json, which is a folder"):
        predict_files(predictor, _inputs(tmp_path), out, progress=False)
    assert not (out / "a.png").exists()


def test_an_output_that_is_a_link_out_of_the_folder_is_refused(predictor, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "detections.json")
    with pytest.raises(InputError, match="which is a symbolic link"):
        predict_files(predictor, _inputs(tmp_path), out, progress=False)
    os.unlink(out / "detections.json")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "sub")
    inputs = _inputs(tmp_path)
    _image(inputs.folder / "sub" / "b.png", 2)
    with pytest.raises(InputError, match="sub/b.png would be written outside it"):
        predict_files(predictor, collect_inputs(inputs.folder), out, progress=False)
    assert outside.read_text() == "keep me" and not any((tmp_path / "elsewhere").iterdir())


def test_names_are_printed_escaped(predictor, tmp_path):
    root = tmp_path / "in"
    _image(root / "ok.png")
    (root / "evil\x1b[2J\n.png").write_bytes(b"not an image")
    report = predict_files(predictor, collect_inputs(root), tmp_path / "out", progress=False)
    summary = report.summary()
    assert "\x1b" not in summary and "evil\\x1b[2J\\n.png: " in summary
    assert printable("caf\u00e9 \u202e") == "caf\u00e9 \\u202e"  # letters stay, controls show


def test_a_video_with_too_large_frames_is_skipped(predictor, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.mp4").write_bytes(b"\0")
    monkeypatch.setattr("detector.predict.files.video_info",
                        lambda path: VideoInfo(fps=25.0, width=20000, height=20000, frames=1))
    monkeypatch.setattr("detector.predict.files.read_video_batches",
                        lambda *a: pytest.fail("frames of a too large video must not be read"))
    report = predict_files(predictor, collect_inputs(tmp_path / "in"), tmp_path / "out",
                           progress=False)
    assert report.videos == 0 and "20000 x 20000 pixels" in dict(report.skipped)["big.mp4"]


def _checkpoint(tiny_checkpoint, tmp_path, *, dataset=None, cat_ids=None):
    state = load_checkpoint(tiny_checkpoint)
    state["config"]["dataset"].update(dataset or {})
    if cat_ids is not None:
        state["label_to_cat_id"] = cat_ids
    path = tmp_path / "run" / "checkpoints" / "final.pth"
    save_checkpoint(path, state)
    return path


@pytest.mark.parametrize(("dataset", "cat_ids", "message"), [
    ({"max_size": 60000}, None, "max_size"),
    ({"min_size": 10**400}, None, "min_size"),
    ({"min_size": 0}, None, "min_size"),
    (None, {"\u00b2": 1}, "label_to_cat_id"),
    (None, {"1" * 4301: 1}, "label_to_cat_id"),
])
def test_a_checkpoint_with_absurd_sizes_or_ids_is_one_line(tiny_checkpoint, tmp_path, dataset,
                                                          cat_ids, message):
    path = _checkpoint(tiny_checkpoint, tmp_path, dataset=dataset, cat_ids=cat_ids)
    with pytest.raises(SpecError, match=message) as info:
        Predictor.from_checkpoint(path, device="cpu")
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_a_checkpoint_without_resize_and_in_range_sizes_loads(tiny_checkpoint, tmp_path):
    path = _checkpoint(tiny_checkpoint, tmp_path, dataset={"min_size": None, "max_size": 4096})
    predictor = Predictor.from_checkpoint(path, device="cpu", precision="fp32")
    assert predictor(np.zeros((40, 56, 3), np.uint8)).image_size == (40, 56)


@pytest.mark.parametrize("text", ["[" * 100_000, json.dumps({"AP": [[[[[[[[[[1]]]]]]]]]]}),
                                  "[1, 2]", '{"AP": 1' + "0" * 5000 + "}"])
def test_odd_metrics_files_count_as_absent(tmp_path, text):
    path = tmp_path / "run" / "checkpoints" / "final.pth"
    path.parent.mkdir(parents=True)
    (tmp_path / "run" / "final_metrics.json").write_text(text)
    assert checkpoint_metrics(path) is None
