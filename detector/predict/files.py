"""Predict on files and write what a person opens: annotated images, annotated videos and one
``detections.json``; unreadable files are counted and named, never fatal.

    >>> from detector.predict.inputs import collect_inputs
    >>> report = predict_files(predictor, collect_inputs("photos/"), "predictions/")
    >>> print(report.summary())

``predictor`` is anything called as ``predictor(list_of_rgb_arrays)`` that returns one
``detector.predict.predictor.Detections`` per image (all the model keeps; filtered here, once, by
``Detections.above``) and has ``class_names``,
``label_to_cat_id`` and ``batch_size`` (``Predictor`` and ``OnnxPredictor`` both are).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from detector.data.report import DatasetError
from detector.predict.image_files import DEFAULT_MAX_PIXELS
from detector.predict.inputs import InputError, Inputs, printable, read_video_batches, video_info
from detector.predict.predictor import Detections, load_image
from detector.visualize import draw_detections, save_image

__all__ = ["PredictionReport", "output_paths", "predict_files"]

DETECTIONS_FILE = "detections.json"


@dataclass
class PredictionReport:
    """What ``predict_files`` did.

    Attributes:
        output_dir (Path): where the annotated files and ``detections.json`` are.
        images (int): images predicted on; frames (int): video frames predicted on.
        videos (int): videos written.
        detections (int): detections over all images and frames.
        seconds (float): wall time of the whole loop (reading, predicting, drawing, writing).
        skipped (list[tuple[str, str]]): (file, reason) of files that were left out.
    """

    output_dir: Path
    images: int = 0
    frames: int = 0
    videos: int = 0
    detections: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the console: counts, speed, skipped files, where the outputs are (names
        with control characters shown escaped, see ``printable``)."""
        done = self.images + self.frames
        speed = done / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{self.images} images, {self.frames} video frames ({self.videos} videos), "
                 f"{self.detections} detections, {speed:.2f} img/s"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {printable(name)}: {printable(reason)}" for name, reason in self.skipped]
        lines.append(f"annotated files and {DETECTIONS_FILE} in {printable(self.output_dir)}")
        return "\n".join(lines)


def _records(det: Detections, label_to_cat_id: dict[int, int]) -> list[dict]:
    """COCO-style records: ``bbox`` xywh, ``score``, ``category_id``, ``category``."""
    return [{key: record[key] for key in ("bbox", "score", "category_id", "category")}
            for record in det.to_list(label_to_cat_id=label_to_cat_id)]


def _draw(image: np.ndarray, det: Detections, class_names: list[str]) -> np.ndarray:
    return draw_detections(image, det.boxes, det.labels, det.scores, class_names=class_names)


def _plain_output(relative: Path, *, video: bool) -> Path:
    """Annotated file of an input: its relative path, as .mp4 (videos), .jpg (JPEGs) or .png."""
    if video:
        return relative.with_suffix(".mp4")
    return relative.with_suffix(".jpg" if relative.suffix.lower() in (".jpg", ".jpeg") else ".png")


def output_paths(inputs: Inputs, output_dir: str | Path) -> dict[Path, Path]:
    """Where the annotated file of each image and video of ``inputs`` goes in ``output_dir``:
    the input's relative path (see ``_plain_output``); inputs that would share a name
    (``a.png`` and ``a.bmp``) keep their own suffix in it (``a.png``, ``a.bmp.png``).

    Raises:
        InputError: ``output_dir`` is the input folder or inside it, a file would be written
            over an input file, or an output's name is taken by something that is not a
            regular file (a folder named ``detections.json``, a symbolic link) or leads out of
            ``output_dir`` through a symbolic link (``check_targets``).
    """
    output_dir = Path(output_dir)
    if inputs.folder is not None and output_dir.resolve().is_relative_to(inputs.folder.resolve()):
        raise InputError(f"output={output_dir} is inside the input folder {inputs.folder}: pick "
                         f"an output folder outside it (the inputs are never written over)")
    videos = set(inputs.videos)
    plain = {path: _plain_output(inputs.relative(path), video=path in videos)
             for path in [*inputs.images, *inputs.videos]}
    shared = Counter(plain.values())
    taken = {Path(DETECTIONS_FILE)}
    planned = {}
    for path, relative in plain.items():
        if shared[relative] > 1 and relative.name != path.name:
            relative = relative.with_name(path.name + relative.suffix)
        while relative in taken:  # e.g. an input really named a.bmp.png as well
            relative = relative.with_name(f"{relative.stem}_{relative.suffix}")
        taken.add(relative)
        planned[path] = output_dir / relative
    originals = {path.resolve(): path for path in plain}
    for target in [*planned.values(), output_dir / DETECTIONS_FILE]:
        if target.resolve() in originals:
            raise InputError(f"output={printable(output_dir)} would write over the input file "
                             f"{printable(originals[target.resolve()])}: pick another output "
                             f"folder")
    check_targets(output_dir, [*planned.values(), output_dir / DETECTIONS_FILE])
    return planned


def check_targets(output_dir: Path, targets: list[Path]) -> None:
    """Each file to write is absent or a regular file (written over: an earlier run's output),
    and lies inside ``output_dir`` once symbolic links are followed.

    Raises:
        InputError: one line naming the first target that is not.
    """
    root = output_dir.resolve()
    for target in targets:
        name = printable(target.relative_to(output_dir))
        if target.is_symlink() or (target.exists() and not target.is_file()):
            kind = "a symbolic link" if target.is_symlink() else \
                "a folder" if target.is_dir() else "not a regular file"
            raise InputError(f"output={printable(output_dir)} holds {name}, which is {kind}: "
                             f"prediction would write that file; remove it or pick another "
                             f"output folder")
        if not target.parent.resolve().is_relative_to(root):
            raise InputError(f"output={printable(output_dir)}: {name} would be written outside "
                             f"it, through a symbolic link; pick another output folder")


def _read_batch(paths: list[Path], inputs: Inputs, report: PredictionReport):
    """(RGB array, input path) of each readable file; the others go to ``report.skipped``."""
    loaded = []
    for path in paths:
        try:
            loaded.append((load_image(path)[0], path))
        except (DatasetError, ValueError, OSError) as error:
            name = str(inputs.relative(path))
            report.skipped.append((name, _reason(error, path, name)))
    return loaded


def _reason(error: Exception, path: Path, name: str) -> str:
    """Why ``path`` was not read, naming it as the summary does (``name``): the operating
    system's reason for a file that cannot be read, else the reader's message."""
    cause = error if isinstance(error, OSError) else error.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return f"{name} cannot be read: {cause.strerror}"
    return str(error).replace(str(path), name) or type(error).__name__


def _predict_images(predictor, inputs: Inputs, outputs: dict[Path, Path], threshold: float,
                    report: PredictionReport, bar) -> list[dict]:
    entries = []
    step = max(1, int(predictor.batch_size))
    for start in range(0, len(inputs.images), step):
        paths = inputs.images[start:start + step]
        loaded = _read_batch(paths, inputs, report)
        results = predictor([array for array, _ in loaded]) if loaded else []
        for (array, path), det in zip(loaded, results, strict=True):
            det = det.above(threshold)
            save_image(outputs[path], _draw(array, det, predictor.class_names))
            entries.append({"file": inputs.relative(path).as_posix(),
                            "output": outputs[path].relative_to(report.output_dir).as_posix(),
                            "height": det.image_size[0],
                            "width": det.image_size[1],
                            "detections": _records(det, predictor.label_to_cat_id)})
            report.images += 1
            report.detections += len(det)
        bar.update(len(paths))
    return entries


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    """An MPEG-4 (``mp4v``) writer; opencv-python-headless's FFmpeg always has that codec."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write the video {path}")
    return writer


def _predict_video(predictor, path: Path, inputs: Inputs, out_path: Path, threshold: float,
                   report: PredictionReport, bar) -> dict | None:
    relative = inputs.relative(path)
    info = video_info(path)
    if info is None or info.width == 0:
        report.skipped.append((str(relative), "OpenCV cannot open it as a video"))
        return None
    if info.width * info.height > DEFAULT_MAX_PIXELS:
        report.skipped.append((str(relative), f"frames of {info.width} x {info.height} pixels: "
                                              f"more than {DEFAULT_MAX_PIXELS / 1e6:g} megapixels"))
        return None
    writer = _open_writer(out_path, info.fps, (info.width, info.height))
    frames: list[dict] = []
    try:
        for batch in read_video_batches(path, max(1, int(predictor.batch_size))):
            for frame, det in zip(batch, predictor(batch), strict=True):
                det = det.above(threshold)
                drawn = _draw(frame, det, predictor.class_names)
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                frames.append({"frame": len(frames),
                               "detections": _records(det, predictor.label_to_cat_id)})
                report.detections += len(det)
            report.frames += len(batch)
            bar.update(len(batch))
    finally:
        writer.release()
    report.videos += 1
    return {"file": relative.as_posix(),
            "output": out_path.relative_to(report.output_dir).as_posix(),
            "height": info.height, "width": info.width, "fps": info.fps, "frames": frames}


def predict_files(predictor: Any, inputs: Inputs, output_dir: str | Path, *,
                  min_score: float = 0.5, progress: bool = True,
                  metadata: dict | None = None) -> PredictionReport:
    """Run ``predictor`` on every image and video frame of ``inputs``; write into ``output_dir``
    the annotated images (same relative paths as the inputs, see ``output_paths``), annotated
    videos (``.mp4``) and ``detections.json``. Nothing is written over an input file.

    Args:
        min_score: detections below it are neither drawn nor listed.
        progress: show a tqdm bar (images and frames).
        metadata: extra entries for the top of ``detections.json`` (e.g. the checkpoint).

    ``detections.json``: ``{"images": [{"file", "output", "height", "width", "detections":
    [{"bbox": [x, y, w, h], "score", "category_id", "category"}]}], "videos": [{"file", "output",
    "height", "width", "fps", "frames": [{"frame", "detections"}]}], "skipped": [{"file",
    "reason"}], ...}``.

    Raises:
        InputError: ``output_dir`` is inside the input folder, or would hold a file over an input
            (before anything is written).
    """
    output_dir = Path(output_dir)
    outputs = output_paths(inputs, output_dir)  # refuses to write over an input
    output_dir.mkdir(parents=True, exist_ok=True)
    threshold = float(min_score)
    report = PredictionReport(output_dir=output_dir, skipped=list(inputs.skipped))
    total = len(inputs.images) + sum(info.frames for v in inputs.videos if (info := video_info(v)))
    start = time.perf_counter()
    with tqdm(total=total or None, unit="img", desc="predict", disable=not progress) as bar:
        images = _predict_images(predictor, inputs, outputs, threshold, report, bar)
        videos = [entry for path in inputs.videos if (entry := _predict_video(
            predictor, path, inputs, outputs[path], threshold, report, bar)) is not None]
    report.seconds = time.perf_counter() - start
    document = {**(metadata or {}), "min_score": threshold, "images": images,
                "videos": videos,
                "skipped": [{"file": name, "reason": reason} for name, reason in report.skipped]}
    (output_dir / DETECTIONS_FILE).write_text(json.dumps(document, indent=1))
    return report

