"""Checkpoints: atomic writes (temp file + rename), the periodic ``iter_XXXXXXX.pth`` files of a
run (keeping the last K) and loading with clear errors.

Layout of a run's ``checkpoints/``: ``iter_0000100.pth``, ``iter_0000200.pth``, ... (the full
training state, see ``detector.engine.resume.Checkpointer``) and ``final.pth`` (the trained
model with ``config``, ``class_names`` and ``label_to_cat_id``, what ``tools/eval.py`` reads). A killed process leaves
at worst a stray ``.iter_*.tmp`` file, never a truncated checkpoint. A file that is truncated or
corrupt all the same (a full disk, a bad copy) is named when loading, with the previous
checkpoint suggested, and ``find_resume_checkpoint`` passes over it with a warning.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from detector.errors import UserError
from detector.fileio import atomic_writer

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
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
    from an untrusted source cannot run code. A missing file raises ``FileNotFoundError``, an
    unreadable (truncated, corrupt) one ``CheckpointError``; both are one clear line naming
    the file, the latter suggesting the previous checkpoint of its directory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"could not read checkpoint {path} (truncated, corrupt or not "
                              f"written by save_checkpoint: {_first_line(error)}){_previous(path)}"
                              ) from None


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
    are memory-mapped, not read."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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
