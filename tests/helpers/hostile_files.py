"""Helpers of the hostile-input tests (issue #26): a deadline for code that used to hang, and
files that are no regular file (each made in a folder the test owns).

``deadline(seconds)`` raises TimeoutError in the main thread once ``seconds`` have passed (a
SIGALRM timer), so a walk that never ends or an open() of a FIFO that blocks fails the test
instead of hanging the suite. ``make_fifo``, ``make_link_loop`` and ``make_directory`` return a
path named ``name`` in ``folder`` that is a FIFO, a symlink loop (``name`` -> ``other`` -> ``name``)
or a folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def deadline(seconds: float = 10) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging: the block must end within ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def make_fifo(folder: Path, name: str) -> Path:
    os.mkfifo(folder / name)
    return folder / name


def make_link_loop(folder: Path, name: str, other: str = "other") -> Path:
    os.symlink(folder / other, folder / name)
    os.symlink(folder / name, folder / other)
    return folder / name


def make_directory(folder: Path, name: str) -> Path:
    (folder / name).mkdir()
    return folder / name
