"""The one atomic writer: whole files or none, the old file kept on failure, umask modes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from detector.checkpoint import save_checkpoint
from detector.evaluation.coco_eval import save_metrics, save_results
from detector.fileio import atomic_write_text, atomic_writer
from detector.run_files import drop_records_after


def _plain_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask."""
    with open(path, "w") as f:
        f.write("x")
    mode = path.stat().st_mode & 0o777
    path.unlink()
    return mode


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_text_and_bytes_land_whole(tmp_path):
    assert atomic_write_text(tmp_path / "a" / "b.txt", "héllo\n") == tmp_path / "a" / "b.txt"
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    with atomic_writer(tmp_path / "c.bin") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.txt", "c.bin"]


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_written_files_follow_the_umask_like_a_plain_open(tmp_path, umask, existing):
    expected = _plain_mode(tmp_path / "probe")
    assert expected == 0o666 & ~umask  # what the writer must match, by hand
    path = tmp_path / "f.txt"
    if existing:
        path.write_text("old")
        path.chmod(0o600)  # the new file's mode comes from the umask, not from the old file
    atomic_write_text(path, "new")
    assert path.stat().st_mode & 0o777 == expected


def test_every_writer_of_the_package_follows_the_umask(tmp_path, umask):
    """final_metrics.json used to be 0600 beside 0644 neighbours (tempfile.mkstemp)."""
    expected = _plain_mode(tmp_path / "probe")
    metrics_jsonl = tmp_path / "metrics.jsonl"
    metrics_jsonl.write_text('{"iter": 1}\n{"iter": 2}\n')
    metrics_jsonl.chmod(0o600)
    drop_records_after(metrics_jsonl, 1)
    written = [save_metrics(tmp_path / "final_metrics.json", {"AP": 0.5}),
               save_results(tmp_path / "results.json", []),
               save_checkpoint(tmp_path / "final.pth", {"x": 1}),
               metrics_jsonl]
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {p.name: expected for p in written}


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=repr)
def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, error):
    path = tmp_path / "final_metrics.json"
    path.write_text('{"AP": 0.5}')
    with pytest.raises(type(error)), atomic_writer(path, text=True) as f:
        f.write('{"AP": 0.')
        f.flush()
        raise error
    assert path.read_text() == '{"AP": 0.5}'
    assert [p.name for p in tmp_path.iterdir()] == ["final_metrics.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values"):
        save_metrics(tmp_path / "m.json", {"AP": float("nan")})  # NaN is refused, not written
    assert list(tmp_path.iterdir()) == []


def test_a_failed_json_rewrite_keeps_the_old_metrics(tmp_path):
    path = save_metrics(tmp_path / "m.json", {"AP": 0.25})
    with pytest.raises(ValueError):
        save_metrics(path, {"AP": float("inf")})
    assert json.loads(path.read_text()) == {"AP": 0.25}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
