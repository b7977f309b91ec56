"""Checkpoints: atomic writes (temp file + rename), the periodic ``iter_XXXXXXX.pth`` files of a
run (keeping the last K) and loading with clear errors.

Layout of a run's ``checkpoints/``: ``iter_0000100.pth``, ``iter_0000200.pth``, ... (the full
training state, see ``detector.engine.resume.Checkpointer``) and ``final.pth`` (the trained
model with ``config``, ``class_names`` and ``label_to_cat_id``, what ``tools/eval.py`` reads). A killed process leaves
at worst a stray ``.iter_*.tmp`` file, never a truncated checkpoint. A file that is truncated or
corrupt all the same (a full disk, a bad copy) is named when loading, with the previous
checkpoint suggested, and ``find_resume_checkpoint`` passes over it with a warning.

A checkpoint is a file from anywhere (a shared run, a download), so it is data, never trusted:
only tensors and plain values are unpickled, and before that the file must be a regular file (a
directory, a FIFO, a device such as ``/dev/zero``, a symlink loop are named as such; a FIFO is
never opened for blocking) in torch.save's zip format, whose members unpack to at most
``MAX_UNPACK_RATIO`` x its size (or ``MAX_UNPACK_FLOOR`` bytes): a small compressed file that
would take gigabytes (a zip bomb), a member compressed with another method than torch.save's
(stored) or zip's deflate, and the pre-1.6 pickle format (whose storages declare their own
sizes) are refused, one line each.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import BinaryIO

import torch

from detector.errors import UserError
from detector.fileio import atomic_writer, not_regular, open_for_reading

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "check_checkpoint_file",
    "checkpoint_error",
    "find_latest_checkpoint",
    "find_resume_checkpoint",
    "list_periodic_checkpoints",
    "load_checkpoint",
    "periodic_checkpoint_path",
    "save_checkpoint",
    "save_periodic_checkpoint",
]

_PERIODIC = re.compile(r"iter_(\d+)\.pth")

log = logging.getLogger(__name__)

MAX_UNPACK_RATIO = 64  # a checkpoint's members may unpack to this many times its size ...
MAX_UNPACK_FLOOR = 256 * 2**20  # ... or to this many bytes (torch.save stores: ratio 1)
ZIP_MAGIC = b"PK\x03\x04"  # what torch.load takes for its zip format (else: the legacy one)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file exists but cannot be read."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """A readable checkpoint that does not fit this run (other classes, another schedule)."""


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` with ``torch.save`` atomically (``detector.fileio.atomic_writer``), so a
    crash mid-write never leaves a truncated checkpoint.

    ``payload`` should hold only tensors and plain Python values (dicts, lists, strings,
    numbers, None): ``load_checkpoint`` refuses to unpickle anything else."""
    path = Path(path)
    with atomic_writer(path) as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by ``save_checkpoint``.

    Only tensors and plain Python values are unpickled (``weights_only=True``), so a checkpoint
    from an untrusted source cannot run code; the file is checked first (``check_checkpoint_file``
    and the zip members, see the module docstring). A missing file raises ``FileNotFoundError``;
    one that is no regular file, unreadable (truncated, corrupt), or refused raises
    ``CheckpointError``; each is one clear line naming the file, an unreadable one suggesting the
    previous checkpoint of its directory."""
    path = Path(path)
    with _open_checkpoint(path) as f:
        problem = _archive_problem(f, path)
        if problem is None:
            try:
                f.seek(0)
                return torch.load(f, map_location=map_location, weights_only=True)
            except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
                problem = _first_line(error)
    raise CheckpointError(f"could not read checkpoint {path} (truncated, corrupt or not "
                          f"written by save_checkpoint: {problem}){_previous(path)}") from None


def check_checkpoint_file(path: str | Path) -> Path:
    """``path`` as a ``Path`` if it names a regular file (symlinks followed).

    Raises:
        FileNotFoundError: nothing there ("does not exist", or a dangling symlink named).
        CheckpointError: a directory, a FIFO, a device, a socket, a symlink loop, or a file
            that cannot be read (permissions); one line saying which.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as error:
        raise _stat_error(path, error) from None
    except ValueError:  # an embedded NUL byte
        raise CheckpointError(f"checkpoint {str(path)[:200]!r} is not a valid path") from None
    kind = not_regular(info.st_mode)
    if kind is not None:
        raise CheckpointError(f"checkpoint {path} is {kind}, not a checkpoint file")
    return path


def _stat_error(path: Path, error: OSError) -> OSError | CheckpointError:
    if error.errno == errno.ELOOP:
        return CheckpointError(f"checkpoint {path} is a symlink loop (a link that leads back to "
                               f"itself), not a checkpoint file")
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(path):
            return FileNotFoundError(f"checkpoint {path} is a dangling symlink (to "
                                     f"{os.readlink(path)!r}, which does not exist)")
        return FileNotFoundError(f"checkpoint {path} does not exist")
    return CheckpointError(f"checkpoint {path} cannot be read: {error.strerror or error}")


def _open_checkpoint(path: Path) -> BinaryIO:
    """``path`` opened for reading, after ``check_checkpoint_file``; opened without blocking (a
    FIFO put in its place meanwhile cannot hang) and checked again once open."""
    check_checkpoint_file(path)
    try:
        fd = open_for_reading(path)
    except OSError as error:
        raise _stat_error(path, error) from None
    kind = not_regular(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise CheckpointError(f"checkpoint {path} is {kind}, not a checkpoint file")
    return os.fdopen(fd, "rb")


def _archive_problem(f: BinaryIO, path: Path) -> str | None:
    """Why the open file ``f`` is not a zip archive torch.load may unpack (one line), or None.

    Raises:
        CheckpointError: its members would unpack to far more than its size, or are compressed
            with a method torch.save never uses (a zip bomb, or not a checkpoint)."""
    size = os.fstat(f.fileno()).st_size
    if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
        return "not a zip archive (torch.save's format since PyTorch 1.6)"
    f.seek(0)
    try:
        members = zipfile.ZipFile(f).infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as error:
        return _first_line(error)
    for member in members:
        odd = member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or (
            member.compress_type == zipfile.ZIP_STORED and member.file_size != member.compress_size)
        if odd:
            raise CheckpointError(f"checkpoint {path}: its member {member.filename[:80]!r} is "
                                  f"compressed oddly (method {member.compress_type}, "
                                  f"{member.compress_size} -> {member.file_size} bytes); "
                                  f"torch.save stores members uncompressed")
    unpacked = sum(member.file_size for member in members)
    if unpacked > max(MAX_UNPACK_RATIO * size, MAX_UNPACK_FLOOR):
        raise CheckpointError(f"checkpoint {path} would unpack to {unpacked / 2**20:.0f} MiB from "
                              f"{size / 2**20:.1f} MiB ({unpacked / max(size, 1):.0f} x its size: "
                              f"a zip bomb?); refused above {MAX_UNPACK_RATIO} x its size and "
                              f"{MAX_UNPACK_FLOOR // 2**20} MiB")
    return None


def _first_line(error: Exception) -> str:
    line = (str(error).strip().splitlines() or [""])[0][:160]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _previous(path: Path) -> str:
    """'; the previous checkpoint is ...' for an unreadable ``path``: the newest readable
    ``iter_*.pth`` of its directory below its own iteration (any, for ``final.pth``)."""
    match = _PERIODIC.fullmatch(path.name)
    older = [p for p in list_periodic_checkpoints(path.parent)
             if match is None or int(_PERIODIC.fullmatch(p.name).group(1)) < int(match.group(1))]
    readable = next((p for p in reversed(older) if checkpoint_error(p) is None), None)
    if readable is None:
        return "; no older readable checkpoint beside it"
    return f"; the previous checkpoint is {readable} (pass that path instead)"


def checkpoint_error(path: str | Path) -> str | None:
    """None if ``path`` unpickles as a checkpoint, else why not (one line). Cheap: the tensors
    are memory-mapped, not read. The file checks of ``load_checkpoint`` come first (a FIFO is
    never opened for blocking, a zip bomb never unpacked)."""
    try:
        with _open_checkpoint(Path(path)) as f:
            problem = _archive_problem(f, Path(path))
        if problem is not None:
            return problem
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (CheckpointError, FileNotFoundError) as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - any failure means an unreadable file
        return _first_line(error)
    return None


def find_latest_checkpoint(root: str | Path, name: str = "final.pth") -> Path | None:
    """The most recently written ``name`` under ``root`` (searched recursively), or None."""
    candidates = [p for p in Path(root).rglob(name) if p.is_file()] if Path(root).is_dir() else []
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def periodic_checkpoint_path(directory: str | Path, iteration: int) -> Path:
    """``directory/iter_XXXXXXX.pth`` (7-digit zero-padded iteration)."""
    return Path(directory) / f"iter_{int(iteration):07d}.pth"


def list_periodic_checkpoints(directory: str | Path) -> list[Path]:
    """The ``iter_*.pth`` files of ``directory``, oldest (lowest iteration) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := _PERIODIC.fullmatch(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def save_periodic_checkpoint(directory: str | Path, payload: dict, *, iteration: int,
                             keep: int) -> Path:
    """Write ``iter_XXXXXXX.pth`` atomically, then delete all but the ``keep`` newest."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    path = save_checkpoint(periodic_checkpoint_path(directory, iteration), payload)
    for old in list_periodic_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def find_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest (highest iteration) readable ``checkpoints/iter_*.pth`` of a run directory,
    or None when it has none; newer unreadable ones (truncated, corrupt) are passed over with a
    warning.

    Raises:
        CheckpointError: there are ``iter_*.pth`` files, but none of them is readable.
    """
    periodic = list_periodic_checkpoints(Path(output_dir) / "checkpoints")
    newest_problem = None
    for path in reversed(periodic):
        problem = checkpoint_error(path)
        if problem is None:
            return path
        newest_problem = newest_problem or f"{path.name}: {problem}"
        log.warning("skipping unreadable checkpoint %s (%s); trying the previous one", path,
                    problem)
    if periodic:
        raise CheckpointError(f"all {len(periodic)} iter_*.pth in {periodic[0].parent} are "
                              f"unreadable (the newest, {newest_problem}); resume=PATH another "
                              f"checkpoint, or start afresh without resume")
    return None
