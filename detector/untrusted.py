"""Files someone else wrote (a colleague's run folder, a downloaded sweep), read as plain data
and shown as plain text: bounded in size, never a FIFO or a device, JSON without 4,301-digit
numbers or nesting that exhausts the stack, YAML without anchors and aliases (no "billion
laughs"); every problem one :class:`RunFileError` sentence. Names taken from such files are
escaped before they reach a terminal or a report (:func:`shown`), made a single harmless
component before they name a file (:func:`path_component`), and their figures are drawn with
mathtext off (:func:`plain_text`). Used by the studies (run folders) and the model inspection
(checkpoints); matplotlib is imported only when a decorated function draws.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from detector.errors import UserError
from detector.fileio import open_for_reading

__all__ = ["MAX_FILE_BYTES", "RunFileError", "finite_number", "path_component", "plain_text",
           "read_bytes", "read_json", "read_plain_yaml", "shown", "shown_text",
           "writable_dir", "writable_file"]

MAX_FILE_BYTES = 64 << 20  # a run's own files (config, final metrics, overrides); larger: refused
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._=,+-]+")
F = TypeVar("F", bound=Callable[..., Any])


class RunFileError(UserError, ValueError):
    """A file of a run (or a report input) that is not what the tools write; the message is one
    sentence naming the file. A study skips the run with it as the reason."""


def shown(value: Any, *, limit: int | None = 200) -> str:
    """``str(value)`` safe to print or write: control, format (bidi) and unpaired surrogate
    characters as ``\\xNN``/``\\uNNNN`` escapes (``\\n`` too), cut to ``limit`` characters
    (``...`` appended) unless ``limit`` is None."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown_text(text: str) -> str:
    """A multi-line text (a report) with each line :func:`shown` in full (line breaks kept)."""
    return "\n".join(shown(line, limit=None) for line in text.split("\n"))


def path_component(value: Any, *, fallback: str, limit: int = 64) -> str:
    """A name from a file as one harmless path component: only ``A-Za-z0-9._=,+-`` (runs of
    anything else become ``_``), no dot or ``_`` at either end (never ``..`` or hidden), at most
    ``limit`` characters; ``fallback`` when nothing is left."""
    name = _NAME_CHARS.sub("_", str(value)).strip("._")[:limit].strip("._")
    return name or fallback


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None: not a number (bools are not), NaN, infinite, or an
    integer too large for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def read_bytes(path: Path, *, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of a regular file, or None when there is nothing at ``path`` (or a parent is
    not a folder). Raises RunFileError for anything else there (a folder, a FIFO, a device, a
    link loop, an unreadable file) and for a file over ``limit`` bytes; a FIFO is never waited
    on (opened non-blocking, checked before reading)."""
    try:
        fd = open_for_reading(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        why = "a symbolic link loop" if error.errno == errno.ELOOP else error.strerror
        raise RunFileError(f"{shown(path)}: cannot be read ({why})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RunFileError(f"{shown(path)} is not a regular file")
        if info.st_size > limit:
            raise RunFileError(f"{shown(path)} is larger than {_size(limit)}")
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, 1 << 20)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise RunFileError(f"{shown(path)} is larger than {_size(limit)}")
    return data


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"


def _text(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RunFileError(f"{shown(path)} is not UTF-8 text (byte {error.start})") from None


def read_json(path: Path, *, limit: int = MAX_FILE_BYTES) -> Any:
    """The JSON value of a file, None when absent (see :func:`read_bytes`). RunFileError for
    invalid JSON, numbers of more than 4,300 digits and nesting deeper than Python's stack."""
    data = read_bytes(path, limit=limit)
    if data is None:
        return None
    try:
        return json.loads(_text(path, data))
    except RecursionError:
        raise RunFileError(f"{shown(path)} is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, or an integer of over 4,300 digits
        raise RunFileError(f"{shown(path)} is not valid JSON: "
                           f"{shown(str(error).splitlines()[0], limit=80)}") from None


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases: a document is as large as its text."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases are not allowed",
                                              event.start_mark)
        return super().compose_node(parent, index)


def read_plain_yaml(path: Path, *, limit: int = MAX_FILE_BYTES) -> Any:
    """The YAML value of a file (plain data: no anchors, aliases or tags beyond SafeLoader's),
    None when absent. RunFileError for anything else."""
    data = read_bytes(path, limit=limit)
    if data is None:
        return None
    try:
        return yaml.load(_text(path, data), Loader=_PlainLoader)  # noqa: S506 - plain loader
    except RecursionError:
        raise RunFileError(f"{shown(path)} is nested too deeply") from None
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RunFileError(f"{shown(path)} is not plain YAML: {shown(problem, limit=80)}") from None


def writable_file(path: Path) -> Path:
    """``path`` ready to be (over)written: a symbolic link there is removed, not followed (a
    copied report folder may hold one to anywhere), and its folder exists."""
    if path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def writable_dir(path: Path) -> Path:
    """A folder made (parents too) where a symbolic link, if any, was removed first; a file
    there is a RunFileError."""
    if path.is_symlink():
        path.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunFileError(f"{shown(path)} is a file, not a folder") from None
    return path


def plain_text(draw: F) -> F:
    """Decorate a function that draws a figure: its text (titles, labels, legends, ticks) is
    drawn as written, never parsed as mathtext or LaTeX (a class called ``$\\frac`` would stop
    savefig)."""

    @functools.wraps(draw)
    def drawing(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return draw(*args, **kwargs)

    return drawing  # type: ignore[return-value]
