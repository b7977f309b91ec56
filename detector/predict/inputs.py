"""What ``tools/predict.py`` runs on: an image, a folder, a glob pattern or a video, resolved into
lists of image and video files, plus reading a video's frames in batches.

    >>> inputs = collect_inputs("photos/")        # recursive; non-image files are listed as skipped
    >>> inputs.images, inputs.videos, inputs.skipped
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from detector.errors import UserError
from detector.untrusted import shown

__all__ = ["IMAGE_EXTENSIONS", "MAX_ENTRIES", "VIDEO_EXTENSIONS", "InputError", "Inputs",
           "VideoInfo", "collect_inputs", "printable", "read_video_batches", "video_info"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
_GLOB_CHARS = ("*", "?", "[")
MAX_ENTRIES = 1_000_000  # folder entries a search looks at before it gives up


def printable(text: object) -> str:
    """``str(text)`` whole, with control and other unprintable characters (a newline, the ESC of
    a terminal escape sequence, a right-to-left override) shown as escapes (``\\n``,
    ``\\x1b``, ``\\u202e``): a file name printed to a console can neither forge lines nor
    drive the terminal (``detector.untrusted.shown`` without a length limit)."""
    return shown(text, limit=None)


class InputError(UserError, ValueError):
    """The input path names nothing to predict on (missing, or no images/videos in it)."""


@dataclass
class Inputs:
    """Files to predict on.

    Attributes:
        root (Path): the folder relative names are taken from (the input folder, the glob's
            fixed prefix, or the file's own folder).
        images (list[Path]): image files, sorted.
        videos (list[Path]): video files, sorted.
        skipped (list[tuple[str, str]]): (file, reason) of files that are not images or videos,
            broken symbolic links and entries that are no regular files (FIFOs, sockets, ...).
        folder (Path | None): the input folder, when the input was one (nothing is written
            inside it: see ``detector.predict.files.output_paths``).
    """

    root: Path
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    folder: Path | None = None

    def relative(self, path: Path) -> Path:
        """``path`` relative to ``root`` (its bare name when outside it)."""
        try:
            return path.relative_to(self.root)
        except ValueError:
            return Path(path.name)


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` (not a folder) cannot be read as a file; None for a regular file."""
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return "broken symbolic link (its target does not exist)"
    try:
        mode = path.stat().st_mode
    except OSError as error:
        return f"cannot be examined: {error.strerror or error}"
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) \
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special"
    return f"not a regular file: {kind}"


def _sort_files(files: list[Path], root: Path, *, explicit: bool) -> Inputs:
    """Split files into images, videos and skipped ones (among them entries that are no regular
    files). ``explicit``: a named file is tried as an image whatever its extension (a counted
    skip if it is none)."""
    inputs = Inputs(root=root)
    for path in sorted(files):
        if (reason := _not_a_file(path)) is not None:
            inputs.skipped.append((str(inputs.relative(path)), reason))
        elif _is_video(path):
            inputs.videos.append(path)
        elif explicit or path.suffix.lower() in IMAGE_EXTENSIONS:
            inputs.images.append(path)
        else:
            inputs.skipped.append((str(inputs.relative(path)), "not an image or video file"))
    return inputs


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard."""
    fixed = []
    for part in Path(pattern).parts:
        if any(c in part for c in _GLOB_CHARS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _name_matches(name: str, part: str) -> bool:
    """One path component against one pattern component, as ``glob`` does (a wildcard does
    not match a leading dot)."""
    return (part.startswith(".") or not name.startswith(".")) and fnmatch.fnmatchcase(name, part)


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...], *, prefix: bool = False) -> bool:
    """Whether relative path ``parts`` matches ``pattern`` (``**``: any number of folders, not
    hidden ones); with ``prefix``, whether a path below folder ``parts`` could still match."""
    if not parts:
        return bool(pattern) if prefix else all(part == "**" for part in pattern)
    if not pattern:
        return False
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return _matches(parts, rest, prefix=prefix) or (
            not parts[0].startswith(".") and _matches(parts[1:], pattern, prefix=prefix))
    return _name_matches(parts[0], head) and _matches(parts[1:], rest, prefix=prefix)


def _listing(folder: Path, seen: set, room: int) -> list[os.DirEntry] | None:
    """The entries of ``folder`` in name order; None for a folder already ``seen`` (by its
    device and inode, so through any link) or unreadable. More than ``room`` entries: raises
    ``OverflowError`` before listing further."""
    try:
        info = folder.stat()
        if (info.st_dev, info.st_ino) in seen:
            return None
        seen.add((info.st_dev, info.st_ino))
        listed = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if len(listed) == room:
                    raise OverflowError(room)
                listed.append(entry)
    except OSError:
        return None  # unreadable folder: nothing in it to predict on
    return sorted(listed, key=lambda entry: entry.name)


def _walk(root: Path, *, descend: Callable[[tuple[str, ...]], bool],
          keep: Callable[[tuple[str, ...]], bool], follow: bool) -> list[Path]:
    """Entries under ``root`` that are not folders, whose relative parts ``keep`` accepts,
    searching the folders that ``descend`` accepts; each real folder at most once (a symbolic
    link loop such as ``a -> .`` or a bind mount of a parent is not walked again), symbolic
    links to folders followed only with ``follow``. Breadth first, in name order: a folder
    reached by several paths is listed under the shortest (then first by name).

    Raises:
        InputError: more than ``MAX_ENTRIES`` entries looked at.
    """
    files, seen, room = [], set(), MAX_ENTRIES
    queue: deque[tuple[Path, tuple[str, ...]]] = deque([(root, ())])
    while queue:
        folder, parts = queue.popleft()
        try:
            listed = _listing(folder, seen, room) or []
        except OverflowError:
            raise InputError(f"{printable(root)} holds more than {MAX_ENTRIES} entries; name a "
                             f"smaller folder or a narrower glob") from None
        room -= len(listed)
        for entry in listed:
            here = (*parts, entry.name)
            try:
                is_folder = entry.is_dir(follow_symlinks=follow)
            except OSError:
                is_folder = False
            if is_folder:
                if descend(here):
                    queue.append((folder / entry.name, here))
            elif keep(here) and not (entry.is_symlink() and _is_folder(folder / entry.name)):
                files.append(folder / entry.name)
    return files


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _folder_files(root: Path) -> list[Path]:
    """Files under ``root``, recursively, leaving out hidden files and folders; symbolic links
    to folders are not followed."""
    visible = lambda parts: not parts[-1].startswith(".")  # noqa: E731
    return _walk(root, descend=visible, keep=visible, follow=False)


def _glob_files(pattern: str) -> list[Path]:
    """Files matching a glob pattern (``**`` recurses), as ``glob.glob(recursive=True)`` finds
    them, but each real folder searched once: a symbolic link loop ends the search."""
    root = _glob_root(pattern)
    rest = Path(pattern).parts[len(root.parts):]
    if not root.is_dir() or not rest:
        return []
    return _walk(root, descend=lambda parts: _matches(parts, rest, prefix=True),
                 keep=lambda parts: _matches(parts, rest), follow=True)


def collect_inputs(path: str | Path) -> Inputs:
    """Resolve ``path`` into the files to predict on.

    Args:
        path: an image or video file; a folder (searched recursively; hidden files and folders are
            left out; symbolic links to folders are not followed); or a glob pattern such as
            ``"photos/**/*.jpg"`` (``**`` recurses, following symbolic links to folders). Each
            real folder is searched once (a link loop ends there), at most ``MAX_ENTRIES``
            entries in all.

    Raises:
        InputError: ``path`` does not exist, names no image or video at all, or holds more than
            ``MAX_ENTRIES`` entries.
    """
    text = str(path)
    if any(c in text for c in _GLOB_CHARS) and not Path(text).exists():
        files = _glob_files(text)
        if not files:
            raise InputError(f"no files match {printable(text)}")
        inputs = _sort_files(files, _glob_root(text), explicit=False)
    elif Path(text).is_dir():
        inputs = _sort_files(_folder_files(Path(text)), Path(text), explicit=False)
        inputs.folder = Path(text)
    elif Path(text).is_file():
        inputs = _sort_files([Path(text)], Path(text).parent, explicit=True)
    elif Path(text).exists() or Path(text).is_symlink():  # a FIFO, a broken link, ...
        raise InputError(f"{printable(text)}: {_not_a_file(Path(text))}")
    else:
        raise InputError(f"{printable(text)} does not exist (expected an image, a folder, a glob "
                         f"or a video)")
    if not inputs.images and not inputs.videos:
        raise InputError(f"no images or videos in {printable(text)} (looked for "
                         f"{' '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})")
    return inputs


@dataclass(frozen=True)
class VideoInfo:
    """fps, frame size (width, height) and the frame count the container reports (may be 0)."""

    fps: float
    width: int
    height: int
    frames: int


def video_info(path: str | Path) -> VideoInfo | None:
    """The video's properties, or None when OpenCV cannot open it."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return None
        fps = capture.get(cv2.CAP_PROP_FPS)
        return VideoInfo(fps=fps if fps and fps > 0 else 25.0,
                         width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                         frames=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))))
    finally:
        capture.release()


def read_video_batches(path: str | Path, batch_size: int) -> Iterator[list[np.ndarray]]:
    """The frames of a video as RGB uint8 ``[H, W, 3]`` arrays, ``batch_size`` at a time (the
    last batch may be shorter); stops at the first frame OpenCV cannot decode."""
    capture = cv2.VideoCapture(str(path))
    try:
        batch: list[np.ndarray] = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
    finally:
        capture.release()
