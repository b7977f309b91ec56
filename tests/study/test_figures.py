"""The study figures as a reader sees them, rendered from fabricated runs and measured with the
renderer: no text box overprints another, titles and legends lie inside the figure, series of
few points carry markers, log axes read in plain decimals, confusion matrices have a colour bar
and say that they sum over seeds, an empty reliability diagram says why, and only a key that
changes the training is taken as a sweep's variable (an lr sweep on a log axis).

Figures are caught as they are saved (``Figure.savefig`` patched), so every check runs on what
the tools write."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text

from detector.study import build_study, compare, find_runs
from detector.study.analysis import AnalysisOptions, analyze_run
from detector.study.analysis_plots import write_figures
from detector.study.curves import plot_metrics
from detector.study.plots import numeric_key

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "star"}, {"id": 3, "name": "circle"}]
BOXES = {1: [4, 4, 20, 20], 2: [36, 36, 20, 20], 3: [4, 36, 20, 20]}


# --- measuring ---------------------------------------------------------------------------------


@pytest.fixture
def saved(monkeypatch) -> dict[str, Figure]:
    """file name -> the Figure saved under it (the file is still written)."""
    figures: dict[str, Figure] = {}
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        figures[Path(fname).name if not Path(fname).parent.name.startswith("experiment")
                else f"worst/{Path(fname).name}"] = self
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def _render(fig: Figure):
    with matplotlib.rc_context({"text.parse_math": False}):  # as the study figures draw
        fig.canvas.draw()
    return fig.canvas.get_renderer()


def _shown(text: Text) -> bool:
    return text.get_visible() and bool(text.get_text().strip())


def _tick_labels(axis) -> list[Text]:
    lo, hi = sorted(axis.get_view_interval())
    return [t.label1 for t in axis.get_major_ticks()
            if _shown(t.label1) and lo - 1e-12 <= t.get_loc() <= hi + 1e-12]


def _texts(fig: Figure) -> list[Text]:
    """Every upright text of the figure outside legends: titles, axis labels, tick labels,
    notes and annotations."""
    found = [t for t in fig.texts if _shown(t)]
    if fig._suptitle is not None and _shown(fig._suptitle):
        found.append(fig._suptitle)
    for ax in fig.axes:
        found += [t for t in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label,
                              ax.yaxis.label, *ax.texts) if _shown(t)]
        found += _tick_labels(ax.xaxis) + _tick_labels(ax.yaxis)
    unique = list({id(t): t for t in found}.values())  # the suptitle is also a figure text
    return [t for t in unique if t.get_rotation() in (0.0, 90.0)]


def _overlapping(texts: list[Text], renderer) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap (an annotation's own box, without its leader line)."""
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
            if box_a.overlaps(box_b)]


def _inside(fig: Figure, artist, renderer) -> bool:
    box, page = artist.get_window_extent(renderer), fig.bbox
    return (box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y0 >= page.y0 - 1
            and box.y1 <= page.y1 + 1)


def _legends(fig: Figure) -> list[Legend]:
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]


def _check_readable(fig: Figure) -> None:
    """No two texts overlap; titles and legends lie inside the figure; tick labels are plain."""
    renderer = _render(fig)
    assert _overlapping(_texts(fig), renderer) == []
    titles = [ax.title for ax in fig.axes if _shown(ax.title)]
    titles += [fig._suptitle] if fig._suptitle is not None else []
    assert all(_inside(fig, t, renderer) for t in titles), [t.get_text() for t in titles]
    assert all(_inside(fig, legend, renderer) for legend in _legends(fig))
    for ax in fig.axes:
        for label in _tick_labels(ax.xaxis) + _tick_labels(ax.yaxis):
            assert not any(c in label.get_text() for c in "$\\^"), label.get_text()


def _marked(line) -> bool:
    return line.get_marker() not in (None, "None", "", " ")


# --- fabricated runs ---------------------------------------------------------------------------


def _coco(objects: dict[int, list[int]]) -> dict:
    """image id -> category ids (each at its place of BOXES)."""
    pairs = [(i, c) for i, cats in objects.items() for c in cats]
    return {"images": [{"id": i, "file_name": f"{i:03d}.png", "width": 64, "height": 64}
                       for i in objects],
            "annotations": [{"id": n, "image_id": i, "category_id": c, "bbox": BOXES[c],
                             "area": 400.0, "iscrowd": 0} for n, (i, c) in enumerate(pairs, 1)],
            "categories": CATEGORIES}


def _dataset(root: Path) -> Path:
    """4 val images with one of each class; a train split of 10 squares, 10 stars (the same
    frequency) and 1 circle."""
    (root / "annotations").mkdir(parents=True)
    val = _coco({i: [1, 2, 3] for i in (1, 2, 3, 4)})
    train = _coco({i: [1, 2] + ([3] if i == 1 else []) for i in range(1, 11)})
    (root / "annotations" / "instances_val.json").write_text(json.dumps(val))
    (root / "annotations" / "instances_train.json").write_text(json.dumps(train))
    (root / "val").mkdir()
    for i in (1, 2, 3, 4):
        cv2.imwrite(str(root / "val" / f"{i:03d}.png"), np.full((64, 64, 3), 120, np.uint8))
    return root


def _results(errors: int) -> list[dict]:
    """Every box found at 0.9 (each class AP50 1); the first ``errors`` images also get a
    background false positive at 0.95."""
    found = [{"image_id": i, "category_id": c, "bbox": BOXES[c], "score": 0.9}
             for i in (1, 2, 3, 4) for c in (1, 2, 3)]
    return found + [{"image_id": i, "category_id": 2, "bbox": [40, 2, 10, 10], "score": 0.95}
                    for i in range(1, errors + 1)]


def _run(folder: Path, *, overrides: list[str], config: dict, records: list[dict],
         results: list | None = None, ap: float = 0.3) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "final_metrics.json").write_text(json.dumps(
        {"AP": ap, "AP50": ap + 0.3, "status": "finished", "iterations": 20,
         "wall_time_s": 1.0}))
    if results is not None:
        (folder / "final_results.json").write_text(json.dumps(results))
    return folder


def _short(seed: int, phases=("end_to_end",), per: int = 20) -> list[dict]:
    """One log point per phase (``schedule.iterations=20``, ``log_period=20``), then AP."""
    records, it = [], 0
    for phase in phases:
        it += per
        records.append({"iter": it, "phase": phase, "phase_iter": per, "loss": 1.046,
                        "loss_cls": 0.5 + 0.01 * seed, "loss_box": 0.3, "grad_norm": 3.0,
                        "lr": 1e-3})
    return [*records, {"iter": it, "phase": phases[-1], "AP": 0.1, "AP50": 0.3}]


def _config(seed: int, *, experiment: str = "ce", lr: float = 0.02, eval_period: int = 0,
            root: Path | None = None) -> dict:
    config = {"seed": seed, "name": experiment, "output_dir": f"x/{experiment}{seed}{lr}",
              "dataset": {"name": "tiny"}, "optimizer": {"lr": lr},
              "train": {"eval_period": eval_period, "log_period": 20}}
    if root is not None:
        split = {"_target_": "detector.data.CocoDetection", "root": str(root)}
        config["dataset"].update(train={**split, "split": "train"},
                                 val={**split, "split": "val"})
    return config


@pytest.fixture(scope="module")
def analysis_sweep(tmp_path_factory) -> Path:
    """ce and focal (2 seeds each; long names) find every box; an untrained run finds none."""
    base = tmp_path_factory.mktemp("analysis")
    root = _dataset(base / "data")
    arms = {("ce_on_the_imbalanced_set_with_a_long_name", 0): 3,
            ("ce_on_the_imbalanced_set_with_a_long_name", 1): 2, ("focal", 0): 1,
            ("focal", 1): 0, ("untrained", 0): None}
    for (name, seed), errors in arms.items():
        _run(base / "sweep" / f"experiment={name},seed={seed},schedule.iterations=20,"
                              f"model=vgg16_bn_roipool",
             overrides=[f"experiment={name}", f"seed={seed}"],
             config=_config(seed, experiment=name, root=root), records=_short(seed),
             results=[] if errors is None else _results(errors))
    return base / "sweep"


@pytest.fixture
def analysis_figures(analysis_sweep, saved, tmp_path) -> dict[str, Figure]:
    runs = find_runs([analysis_sweep])
    study = build_study(runs)
    analyses = {run.name: analyze_run(run) for run in runs}
    write_figures(study, analyses, tmp_path, AnalysisOptions(worst=1))
    return saved


# --- the analysis figures ----------------------------------------------------------------------


def test_class_labels_at_one_frequency_do_not_overprint(analysis_figures):
    """square and star: both 10 train instances and AP50 1 in two groups (four points in one
    place); circle: 1 instance. Every label stays apart, the ticks too, the legend beside the
    axes."""
    fig = analysis_figures["class_ap_vs_frequency.png"]
    _check_readable(fig)
    renderer = _render(fig)
    (ax,) = [a for a in fig.axes]
    names = [t for t in ax.texts if t.get_text() in ("square", "star", "circle")]
    assert len(names) >= 6  # every class of the two trained groups is named
    assert _overlapping(names, renderer) == []
    gap = min(abs(legend.get_window_extent(renderer).y0 - ax.get_window_extent(renderer).y1)
              for legend in _legends(fig))
    assert gap < 0.1 * fig.bbox.height  # next to the axes, not across the page


def test_confusion_has_a_colour_bar_and_says_it_sums_runs(analysis_figures):
    fig = analysis_figures["confusion.png"]
    _check_readable(fig)
    assert any(hasattr(ax, "_colorbar") for ax in fig.axes)
    said = " ".join(t.get_text() for t in _texts(fig))
    assert "summed" in said and "sum of 2 runs" in said
    errors = analysis_figures["errors.png"]
    _check_readable(errors)
    assert "mean over each group's analysed runs" in errors._suptitle.get_text()


def test_empty_reliability_diagram_says_why_and_the_legend_covers_no_panel(analysis_figures):
    fig = analysis_figures["calibration.png"]
    _check_readable(fig)
    renderer = _render(fig)
    reliability, histogram = fig.axes[:2]
    notes = " ".join(t.get_text() for t in reliability.texts)
    assert "empty" in notes and "experiment=untrained" in notes and "no detections" in notes
    for legend in _legends(fig):
        for ax in (reliability, histogram):
            assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_worst_image_titles_fit_the_figure(analysis_figures):
    worst = {name: fig for name, fig in analysis_figures.items() if name.startswith("worst/")}
    assert worst
    for fig in worst.values():
        renderer = _render(fig)
        (ax,) = fig.axes
        assert "schedule.iterations=20" in ax.title.get_text().replace("\n", "")
        assert _inside(fig, ax.title, renderer)


# --- training curves and the comparison --------------------------------------------------------


def test_a_short_run_draws_markers_and_plain_log_ticks(tmp_path, saved):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in _short(0)))
    plot_metrics(metrics, tmp_path / "loss_curves.png")
    fig = saved["loss_curves.png"]
    _check_readable(fig)
    lines = [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata()) <= 3]
    assert lines and all(_marked(line) for line in lines)
    log_axes = [ax for ax in fig.axes if ax.get_yscale() == "log"]
    assert log_axes
    for ax in log_axes:
        for label in _tick_labels(ax.yaxis):
            float(label.get_text())  # a plain number, not 1.046x10^0


def test_schedule_phase_labels_lie_on_no_panel(tmp_path, saved):
    phases = ("rpn", "fast_rcnn", "rpn_finetune", "fast_rcnn_finetune")
    for name, ran in (("ce_with_a_name_longer_than_the_legend_is_wide", ("end_to_end",)),
                      ("two_stage", phases)):
        for seed in (0, 1):
            _run(tmp_path / "runs" / f"experiment={name},seed={seed}",
                 overrides=[f"experiment={name}", f"seed={seed}"],
                 config=_config(seed, experiment=name),
                 records=_short(seed, ran, per=5 if len(ran) > 1 else 20))
    compare([tmp_path / "runs"], tmp_path / "out")
    fig = saved["curves.png"]
    _check_readable(fig)
    renderer = _render(fig)
    panels = [ax.get_window_extent(renderer) for ax in fig.axes]
    named = [t for t in [*_texts(fig), *(t for lg in _legends(fig) for t in lg.get_texts())]
             if any(p in t.get_text() for p in phases[1:])]
    assert named  # the phases are named ...
    for text in named:  # ... off the curves
        assert not any(text.get_window_extent(renderer).overlaps(box) for box in panels)
    curves = [line for ax in fig.axes for line in ax.get_lines()
              if line.get_linestyle() == "-"]  # the groups' (phase starts are dashed)
    few = [line for line in curves if np.sum(np.isfinite(line.get_ydata())) <= 3]
    assert few and all(_marked(line) for line in few)


def test_only_a_key_that_changes_training_is_swept_and_lr_on_a_log_axis(tmp_path, saved):
    for period in (0, 5, 10):
        _run(tmp_path / "periods" / f"train.eval_period={period}",
             overrides=[f"train.eval_period={period}"], config=_config(0, eval_period=period),
             records=_short(0), ap=0.3 + period / 100)
    report = compare([tmp_path / "periods"], tmp_path / "out_periods")
    assert report.study.keys == ["train.eval_period"]
    assert numeric_key(report.study) is None
    assert "lr_sweep.png" not in {p.name for p in report.files}
    for lr in (0.002, 0.005, 0.01, 0.02):
        _run(tmp_path / "lrs" / f"optimizer.lr={lr}", overrides=[f"optimizer.lr={lr}"],
             config=_config(0, lr=lr), records=_short(0), ap=0.2 + lr)
    report = compare([tmp_path / "lrs"], tmp_path / "out_lrs")
    assert numeric_key(report.study) == "optimizer.lr"
    fig = saved["lr_sweep.png"]
    _check_readable(fig)
    assert fig.axes[0].get_xscale() == "log"
    shown = {label.get_text() for label in _tick_labels(fig.axes[0].xaxis)}
    assert {"0.002", "0.005", "0.01", "0.02"} <= shown
