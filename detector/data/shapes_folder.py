"""The shapes set's folder on disk: its manifest, which files the generator wrote, and removing
only those (`detector.data.shapes` generates; this module decides what may be deleted).

A set's folder holds ``manifest.json`` (the generator's parameters), ``annotations/`` with
``instances_{train,val}.json`` and ``{train,val}/NNNNNN.png`` (index below the manifest's
``num_train``/``num_val``). Nothing else, no links: a folder with any other entry is never
emptied. A set is built in a temporary sibling ``.<root name>.generating-<pid>-XXXXXXXX``, its
manifest written first; one a killed run left is removed later under the same rule.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from detector.data.report import DatasetError

SPLITS = ("train", "val")
MAX_IMAGES = 100_000  # per split; six-digit file names
TMP_MARK = ".generating-"  # temporary folders: .<root name>.generating-<pid>-XXXXXXXX
_STALE_SECONDS = 120  # a temporary folder of a process that is gone, idle this long, is removed
_ABANDONED_SECONDS = 24 * 3600  # ... and any temporary folder idle this long (another host's)
_MANIFEST_BYTES = 65536  # a manifest is a few lines; a bigger "manifest" is not one
_BYTES_PER_PIXEL = 3  # a generous PNG size (noisy shapes compress to ~2), for the disk check
_ANNOTATION_FILES = frozenset(f"instances_{split}.json" for split in SPLITS)
_IMAGE_NAME = re.compile(r"[0-9]{6}\.png")

log = logging.getLogger(__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_manifest(root: Path) -> dict | None:
    """The JSON object in ``root/manifest.json`` if that is a small regular file, else None."""
    path = root / "manifest.json"
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MANIFEST_BYTES:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _listing(folder: Path, limit: int) -> list[os.DirEntry] | None:
    """The entries of `folder`, or None if it cannot be listed or holds more than `limit`."""
    try:
        with os.scandir(folder) as entries:
            listed = list(itertools.islice(entries, limit + 1))
    except OSError:
        return None
    return listed if len(listed) <= limit else None


def _own_entry(entry: os.DirEntry, counts: dict[str, int]) -> list[Path] | None:
    """The paths under one entry of a set's folder, files before their folder, if the generator
    wrote all of them (as its manifest's `counts` say), else None."""
    if entry.is_symlink():
        return None
    if entry.name == "manifest.json" and entry.is_file():
        return [Path(entry.path)]
    if entry.name == "annotations" and entry.is_dir():
        inner = _listing(Path(entry.path), len(_ANNOTATION_FILES))
        ours = lambda name: name in _ANNOTATION_FILES  # noqa: E731
    elif entry.name in SPLITS and entry.is_dir():
        count = counts[entry.name]
        inner = _listing(Path(entry.path), count)
        ours = lambda name: bool(_IMAGE_NAME.fullmatch(name)) and int(name[:6]) < count  # noqa: E731
    else:
        return None
    if inner is None or not all(ours(e.name) and not e.is_symlink() and e.is_file()
                                for e in inner):
        return None
    return [Path(e.path) for e in inner] + [Path(entry.path)]


def _generated_files(folder: Path, manifest: dict | None) -> list[Path] | None:
    """Everything in `folder` (files before their folders), if the generator whose `manifest`
    lies there wrote all of it; None if `folder` holds anything else (another name, a link, an
    image index past the manifest's count) or the manifest is not the generator's."""
    manifest = manifest if manifest is not None else {"generator": "shapes"}
    counts = {split: manifest.get(f"num_{split}", 0) for split in SPLITS}
    if manifest.get("generator") != "shapes" or not all(
            _is_int(n) and 0 <= n <= MAX_IMAGES for n in counts.values()):
        return None
    paths: list[Path] = []
    top = _listing(folder, 2 + len(SPLITS))
    if top is None:
        return None
    for entry in top:
        own = _own_entry(entry, counts)
        if own is None:
            return None
        paths += own
    return paths


def _remove(paths: list[Path]) -> None:
    """Remove `paths` (files, then the folders they emptied); a folder that is not empty by then
    (something appeared in it) stops this with an OSError, its contents untouched."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def replaceable(root: Path) -> list[Path]:
    """What goes before a new set takes the place of the existing `root`: the files of the
    generator's earlier set there (none for an empty folder).

    Raises:
        DatasetError: `root` is a link or not a folder, or holds anything the generator did not
            write: it is never emptied.
    """
    if root.is_symlink() or not root.is_dir():
        what = "a symbolic link" if root.is_symlink() else "not a folder"
        raise DatasetError(f"{root} is {what}; refusing to overwrite it with the shapes dataset "
                           "(choose another root)")
    manifest = read_manifest(root)
    if manifest is None:
        own = [] if _listing(root, 0) == [] else None
    else:
        own = _generated_files(root, manifest)
    if own is None:
        raise DatasetError(f"{root} holds files the shapes generator did not write; refusing to "
                           "overwrite it (choose another root, or move those files away)")
    return own


def move_into_place(tmp: Path, root: Path, params: dict) -> None:
    """Replace `root` by the finished `tmp`; fine if a concurrent process got there first.
    Only the files an earlier set of the generator has there are removed (`_replaceable`)."""
    if read_manifest(root) == params:
        return
    try:
        if root.exists() or root.is_symlink():
            _remove(replaceable(root))
        os.replace(tmp, root)  # onto the now empty folder
    except OSError as error:
        if read_manifest(root) != params:
            raise DatasetError(f"{root} changed while the shapes dataset was generated, it is "
                               f"left as it is ({error.strerror or error})") from None


def check_free_space(root: Path, images: int, image_size: int,
                     long_side: int | None = None) -> None:
    """Raise `DatasetError` if ``images`` PNGs of ``image_size`` px (by ``long_side`` px when
    given) may not fit beside `root`."""
    need = images * image_size * (long_side or image_size) * _BYTES_PER_PIXEL
    place = root.parent.absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return
    if need > free:
        sides = image_size if long_side is None else f"up to {image_size} x {long_side}"
        raise DatasetError(f"the shapes dataset ({images} images of {sides} px, up to "
                           f"{need / 1e9:.2f} GB) may not fit in the {free / 1e9:.2f} GB free "
                           f"at {place}")


def _alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (True when it cannot be told)."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


def _stale(tmp: Path, pid_text: str) -> bool:
    """Whether the temporary folder `tmp` of process `pid_text` is a killed run's."""
    if not (pid_text.isascii() and pid_text.isdigit() and len(pid_text) <= 10):
        return False
    try:
        if tmp.is_symlink() or not tmp.is_dir():
            return False
        idle = time.time() - max(p.stat().st_mtime for p in
                                 (tmp, *(tmp / name for name in ("annotations", *SPLITS)))
                                 if p.is_dir() and not p.is_symlink())
    except OSError:
        return False
    return idle > _ABANDONED_SECONDS or (idle > _STALE_SECONDS and not _alive(int(pid_text)))


def remove_stale_temporaries(root: str | Path) -> list[Path]:
    """Remove the temporary folders killed runs of the generator left beside `root`
    (``.<root name>.generating-<pid>-*``): those of a process that is gone (idle for
    2 minutes) or idle for a day, holding nothing but the generator's files. Anything else is
    left alone. Returns the folders removed."""
    root = Path(root)
    prefix = f".{root.name}{TMP_MARK}"
    try:
        with os.scandir(root.parent) as entries:
            found = [Path(e.path) for e in entries if e.name.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for tmp in sorted(found)[:100]:
        if not _stale(tmp, tmp.name[len(prefix):].split("-", 1)[0]):
            continue
        own = _generated_files(tmp, read_manifest(tmp))
        try:
            if own is None:
                raise OSError("it holds files the generator did not write")
            _remove([*own, tmp])
        except OSError as error:
            log.info("left %s alone (%s)", tmp, error)
        else:
            log.info("removed %s, left by an interrupted generation", tmp)
            removed.append(tmp)
    return removed


