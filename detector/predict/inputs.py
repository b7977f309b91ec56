"""What ``tools/predict.py`` runs on: an image, a folder, a glob pattern or a video, resolved into
lists of image and video files, plus reading a video's frames in batches.

    >>> inputs = collect_inputs("photos/")        # recursive; non-image files are listed as skipped
    >>> inputs.images, inputs.videos, inputs.skipped
"""

from __future__ import annotations

import glob
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from detector.errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "InputError", "Inputs", "VideoInfo",
           "collect_inputs", "read_video_batches", "video_info"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
_GLOB_CHARS = ("*", "?", "[")


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


def collect_inputs(path: str | Path) -> Inputs:
    """Resolve ``path`` into the files to predict on.

    Args:
        path: an image or video file; a folder (searched recursively; hidden files and folders are
            left out); or a glob pattern such as ``"photos/**/*.jpg"`` (``**`` recurses).

    Raises:
        InputError: ``path`` does not exist, or names no image or video at all.
    """
    text = str(path)
    if any(c in text for c in _GLOB_CHARS) and not Path(text).exists():
        matches = [Path(p) for p in glob.glob(text, recursive=True)]
        files = [p for p in matches if not p.is_dir()]
        if not files:
            raise InputError(f"no files match {text}")
        inputs = _sort_files(files, _glob_root(text), explicit=False)
    elif Path(text).is_dir():
        root = Path(text)
        files = [p for p in root.rglob("*") if not p.is_dir()
                 and not any(part.startswith(".") for part in p.relative_to(root).parts)]
        inputs = _sort_files(files, root, explicit=False)
        inputs.folder = root
    elif Path(text).is_file():
        inputs = _sort_files([Path(text)], Path(text).parent, explicit=True)
    elif Path(text).exists() or Path(text).is_symlink():  # a FIFO, a broken link, ...
        raise InputError(f"{text}: {_not_a_file(Path(text))}")
    else:
        raise InputError(f"{text} does not exist (expected an image, a folder, a glob or a video)")
    if not inputs.images and not inputs.videos:
        raise InputError(f"no images or videos in {text} (looked for "
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
