"""Writing a file atomically: into a temp file beside it, then renamed into place.

A reader (or a run killed mid-write) sees the old file or the new one, never half of one; a
failed write leaves the old file as it was and removes its temp file. The temp file is named
``.<name>.<random hex>.tmp`` (hidden, so globs for ``*.pth`` or ``*.json`` pass over a stray one
left by a killed process). The written file gets the mode a plain ``open(path, "w")`` would
give it under the current umask (``tempfile.mkstemp`` would make it private, mode 0600).
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_write_text", "atomic_writer"]


@contextmanager
def atomic_writer(path: str | os.PathLike, *, text: bool = False) -> Iterator[IO]:
    """Open a temp file beside ``path`` for writing (binary, or UTF-8 text with ``text=True``);
    when the block ends without an exception, flush it to disk and rename it onto ``path``.
    On any exception (``KeyboardInterrupt`` included) the temp file is removed and ``path`` is
    untouched. Missing parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open()
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path`` as a ``Path``."""
    with atomic_writer(path, text=True) as f:
        f.write(text)
    return Path(path)


def not_regular(mode: int) -> str | None:
    """What a file of ``mode`` (``os.stat(...).st_mode``) is when it is no regular file ("a
    directory", "a FIFO (named pipe)", "a character device", ...), or None for a regular file."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def open_for_reading(path: str | os.PathLike) -> int:
    """A read-only, close-on-exec descriptor of ``path``, opened without blocking: a FIFO put
    where a file was expected does not wait for a writer. Check what it is with ``os.fstat``
    and ``not_regular`` before reading. Raises OSError as ``os.open``."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))

