"""A checkpoint file from anywhere (issue #26): what is no regular file is named as such and never
opened for blocking, and a zip archive is refused before torch.load unpacks more than a bound.

Each hostile file is made here: a directory, a FIFO, ``/dev/zero``, a symlink loop, a dangling
symlink; a 300 KB archive whose deflated member unpacks to 300 MiB (before: 300 MiB taken, then
loaded), a member compressed with bzip2, the pre-1.6 pickle format. Real checkpoints (the tiny
trained model's ``final.pth``, a training checkpoint) pass. FIFO tests run under an alarm: before,
``checkpoint_error`` blocked forever opening one.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import torch
from helpers.hostile_files import deadline, make_directory, make_fifo, make_link_loop

from detector import checkpoint as ckpt
from detector.checkpoint import (
    CheckpointError,
    check_checkpoint_file,
    checkpoint_error,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _fifo(folder: Path) -> Path:
    return make_fifo(folder, "iter_0000009.pth")


def _loop(folder: Path) -> Path:
    return make_link_loop(folder, "a.pth", "b.pth")


def _directory(folder: Path) -> Path:
    return make_directory(folder, "final.pth")


NOT_REGULAR = {
    "directory": (_directory, "is a directory, not a checkpoint file"),
    "fifo": (_fifo, r"is a FIFO \(named pipe\), not a checkpoint file"),
    "dev_zero": (lambda folder: Path("/dev/zero"), "is a character device, not a checkpoint file"),
    "symlink_loop": (_loop, r"is a symlink loop \(a link that leads back to itself\), not a "
                            r"checkpoint file"),
}


@pytest.mark.parametrize("kind", NOT_REGULAR)
def test_what_is_no_regular_file_is_named_and_never_blocks(kind, tmp_path):
    make, message = NOT_REGULAR[kind]
    path = make(tmp_path)
    with deadline():
        with pytest.raises(CheckpointError, match=message) as caught:
            load_checkpoint(path)
        assert str(caught.value) == f"checkpoint {path} {message.replace(chr(92), '')}"
        with pytest.raises(CheckpointError, match=message):
            check_checkpoint_file(path)
        assert message.replace("\\", "") in checkpoint_error(path)


def test_a_fifo_among_periodic_checkpoints_is_passed_over(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    good = save_checkpoint(directory / "iter_0000004.pth", {"iteration": 4})
    _fifo(directory)  # iter_0000009.pth: newer, but no file to read
    with deadline():
        assert find_resume_checkpoint(tmp_path) == good


def test_a_dangling_symlink_says_where_it_points(tmp_path):
    os.symlink(tmp_path / "gone.pth", tmp_path / "link.pth")
    with pytest.raises(FileNotFoundError, match=r"link\.pth is a dangling symlink \(to '.*gone\.pth"
                                                r"', which does not exist\)"):
        load_checkpoint(tmp_path / "link.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


def _archive(members: dict[str, bytes], path: Path, *, compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return path


def _members(payload) -> dict[str, bytes]:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    return {name: source.read(name) for name in source.namelist()}


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    """A checkpoint of one uint8 tensor of 300 MiB of zeros, its storage deflated: ~300 KB on
    disk. torch.load reads deflated members (its miniz does), so it used to take 300 MiB."""
    size = 300 * 2**20
    members = _members({"x": torch.zeros(200, dtype=torch.uint8)})
    pickle_name = next(name for name in members if name.endswith("data.pkl"))
    # the pickle declares 200 elements (BININT1 200) twice: storage size and tensor shape
    members[pickle_name] = members[pickle_name].replace(b"K\xc8", b"J" + size.to_bytes(4, "little"))
    path = tmp_path_factory.mktemp("bomb") / "iter_0000008.pth"
    with zipfile.ZipFile(path, "w", compresslevel=9) as out:
        for name, data in members.items():
            if not name.endswith("data/0"):
                out.writestr(name, data)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with out.open(info, "w") as member:
                chunk = bytes(2**20)
                for _ in range(size // 2**20):
                    member.write(chunk)
    return path


def test_a_zip_bomb_is_refused_before_it_is_unpacked(zip_bomb, monkeypatch):
    assert zip_bomb.stat().st_size < 2**20
    unpacked = []
    monkeypatch.setattr(ckpt.torch, "load", lambda *a, **k: unpacked.append(a) or {})
    with pytest.raises(CheckpointError, match=r"would unpack to 300 MiB from 0\.3 MiB \(\d+ x its "
                                              r"size: a zip bomb\?\); refused above 64 x its size "
                                              r"and 256 MiB") as caught:
        load_checkpoint(zip_bomb)
    assert str(caught.value).startswith(f"checkpoint {zip_bomb} ") and not unpacked
    assert "would unpack to 300 MiB" in checkpoint_error(zip_bomb) and not unpacked


def test_resume_true_passes_over_a_zip_bomb(zip_bomb, tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    good = save_checkpoint(directory / "iter_0000004.pth", {"iteration": 4})
    os.symlink(zip_bomb, directory / zip_bomb.name)
    assert find_resume_checkpoint(tmp_path) == good


def test_a_modest_deflated_archive_still_loads(tmp_path):
    """zip's own compression, within the bound, is no reason to refuse."""
    path = _archive(_members({"x": torch.arange(1000)}), tmp_path / "deflated.pth",
                    compression=zipfile.ZIP_DEFLATED)
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(1000))


def test_an_oddly_compressed_member_is_refused(tmp_path):
    path = _archive(_members({"x": torch.arange(10)}), tmp_path / "bzip2.pth",
                    compression=zipfile.ZIP_BZIP2)
    with pytest.raises(CheckpointError, match=r"bzip2\.pth: its member '.*data\.pkl' is "
                                              r"compressed oddly \(method 12, "):
        load_checkpoint(path)


def test_the_legacy_pickle_format_is_refused(tmp_path):
    """Its storages declare their own sizes: torch.save has not written it since PyTorch 1.6."""
    path = tmp_path / "legacy.pth"
    torch.save({"x": torch.arange(3)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"legacy\.pth \(truncated, corrupt or not written by "
                                              r"save_checkpoint: not a zip archive"):
        load_checkpoint(path)
    assert checkpoint_error(path).startswith("not a zip archive")


def test_real_checkpoints_pass_the_archive_checks(tiny_checkpoint, tmp_path):
    """torch.save stores its members: they unpack to the file's size, far below the bound."""
    state = load_checkpoint(tiny_checkpoint)
    assert state["class_names"] and checkpoint_error(tiny_checkpoint) is None
    members = zipfile.ZipFile(tiny_checkpoint).infolist()
    assert {m.compress_type for m in members} == {zipfile.ZIP_STORED}
    assert sum(m.file_size for m in members) <= tiny_checkpoint.stat().st_size
    payload = {"model": {"w": torch.randn(64, 64)}, "rng": [torch.get_rng_state()],
               "iteration": 3}
    path = save_checkpoint(tmp_path / "iter_0000003.pth", payload)
    assert torch.equal(load_checkpoint(path)["model"]["w"], payload["model"]["w"])
