"""The data inspection as text (``tools/inspect_data.py``): the printed summary (with the line
``anchor coverage (IoU >= 0.5): NN.N %``), report.md (markdown tables, names escaped) and the
advice: what to change, one sentence each, all in ``Advice`` (one place to revise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.data.report import KIND_DESCRIPTIONS
from detector.inspection.data_stats import (
    COVERAGE_TARGET,
    DUPLICATE_IOU,
    TINY_SIDE,
    AnchorSet,
    Coverage,
    DataInspection,
    Uncovered,
)
from detector.inspection.rpn_positives import RPNPositives
from detector.untrusted import shown, shown_text

__all__ = ["ADVICE", "Advice", "advice", "coverage_line", "report_markdown", "rpn_line",
           "summary_lines", "write_report"]

PRINTED_CLASSES = 12  # the summary names the classes with most boxes; report.md has them all


# --- the advice: one place (issue 29); each entry is one sentence -----------------------------
@dataclass(frozen=True)
class Advice:
    """When the report says what to change: coverage at IoU 0.5 under ``coverage_below``, or
    the largest class over ``imbalance_above`` times the smallest."""

    coverage_below: float = COVERAGE_TARGET
    imbalance_above: float = 5.0

    def anchors(self, coverage: float, anchors: AnchorSet, fitted: Coverage | None,
                uncovered: Uncovered | None = None) -> str:
        if anchors.source != "config":
            return (f"Anchor coverage at IoU 0.5 is {_pct(coverage)} % even with anchors fitted "
                    f"to these boxes: one grid of {len(anchors.sizes)} sizes x "
                    f"{len(anchors.ratios)} ratios at stride {anchors.stride} does not fit them "
                    f"all (try more sizes or ratios, or a smaller stride for small boxes).")
        text = f"Anchor coverage at IoU 0.5 is {_pct(coverage)} %, under {_pct(self.coverage_below)} %"
        if uncovered is not None:
            text += (f": the {uncovered.count} boxes no anchor reaches are about "
                     f"{uncovered.size_median:.0f} px (sqrt of the area; 10-90 %: "
                     f"{uncovered.size_p10:.0f}-{uncovered.size_p90:.0f} px, median h/w "
                     f"{uncovered.ratio_median:.2f})")
            if uncovered.shape_fits >= 0.5:  # the shapes are there; the centres are too far
                text += (f" and {_pct(uncovered.shape_fits)} % of them match an anchor shape but "
                         f"lie between the anchor centres (stride {anchors.stride} px): a larger "
                         f"dataset.min_size or model.backbone.output_stride=8 brings centres "
                         f"closer to them")
            else:
                text += (f", so add a size near {uncovered.size_median:.0f} to "
                         f"dataset.anchor_sizes (now {_numbers(anchors.sizes)})")
                low, high = min(anchors.ratios), max(anchors.ratios)
                if not low / 1.25 <= uncovered.ratio_median <= high * 1.25:
                    text += (f" and a ratio near {uncovered.ratio_median:.2f} to "
                             f"dataset.anchor_ratios (now {_numbers(anchors.ratios)})")
        if fitted is not None and fitted.overall[0.5] > coverage:
            text += (f"; anchors fitted to all the boxes (dataset.anchor_sizes=auto "
                     f"dataset.anchor_ratios=auto: sizes {_numbers(fitted.anchors.sizes)}, ratios "
                     f"{_numbers(fitted.anchors.ratios)}) cover {_pct(fitted.overall[0.5])} %, but "
                     f"on the sets measured so far they lowered AP50 while raising coverage "
                     f"(docs/own_data.md)")
        return text + "."

    def imbalance(self, ratio: float) -> str:
        return (f"The largest class has {_ratio(ratio)} times the boxes of the smallest (over "
                f"1:{self.imbalance_above:g}): compare losses on these data before choosing one "
                f"(loss=ce, focal, ohem, class_balanced_ce, class_balanced_focal: the arms of "
                f"make study-imbalanced); on the imbalanced shapes set none beat cross-entropy "
                f"by more than the seed noise and the class-balanced weights scored lower "
                f"(docs/studies.md).")


ADVICE = Advice()


def advice(inspection: DataInspection, rules: Advice = ADVICE) -> list[str]:
    """The sentences the report adds (anchors, then imbalance); empty when nothing needs
    changing."""
    out = []
    coverage = inspection.coverage.overall.get(0.5)
    if coverage is not None and coverage < rules.coverage_below:
        out.append(rules.anchors(coverage, inspection.coverage.anchors, inspection.fitted,
                                 inspection.uncovered))
    if inspection.imbalance is not None and inspection.imbalance > rules.imbalance_above:
        out.append(rules.imbalance(inspection.imbalance))
    return out


# --- text -------------------------------------------------------------------------------------
def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100.0 * fraction:.1f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else "inf" if math.isinf(value) else f"{value:.3g}"


def _numbers(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def coverage_line(threshold: float, fraction: float | None) -> str:
    """``anchor coverage (IoU >= 0.5): NN.N %``"""
    return f"anchor coverage (IoU >= {threshold:g}): {_pct(fraction)} %"


def _anchor_line(anchors: AnchorSet) -> str:
    return (f"anchors ({anchors.source}): sizes {_numbers(anchors.sizes)}, ratios (h/w) "
            f"{_numbers(anchors.ratios)}, stride {anchors.stride}, offset {anchors.offset:g}")


def summary_lines(inspection: DataInspection) -> list[str]:
    """What the tool prints: the counts, the loader's problems, coverage and advice."""
    i = inspection
    low, high = i.image_size_range
    ranked = sorted(zip(i.counts, range(len(i.counts)), i.class_names, strict=True),
                    key=lambda row: (-row[0], row[1]))  # most boxes first, then class order
    counts = ", ".join(f"{shown(name, limit=40)} {n}" for n, _, name in ranked[:PRINTED_CLASSES])
    if len(ranked) > PRINTED_CLASSES:
        counts += f", ... ({len(ranked) - PRINTED_CLASSES} more in report.md)"
    lines = [f"{shown(i.name)} ({i.split} split): {i.num_images} images, "
             f"{len(i.class_names)} {'class' if len(i.class_names) == 1 else 'classes'}, "
             f"{i.num_boxes} boxes; model input {low}-{high} px a side",
             f"boxes per class: {counts}",
             f"imbalance (largest / smallest class): {_ratio(i.imbalance)}",
             f"images without boxes: {i.empty_images}; boxes under {TINY_SIDE:g} px: {i.tiny}; "
             f"duplicate boxes (IoU > {DUPLICATE_IOU:g}): {i.duplicates}",
             *shown_text(i.problems_text).split("\n"),
             _anchor_line(i.coverage.anchors),
             *(coverage_line(t, f) for t, f in i.coverage.overall.items())]
    if i.fitted is not None:
        lines += [_anchor_line(i.fitted.anchors),
                  *(f"  with them: {coverage_line(t, f)}" for t, f in i.fitted.overall.items())]
    if i.rpn is not None:
        lines.append(rpn_line(i.rpn))
    return lines + [f"advice: {text}" for text in advice(i)]


def rpn_line(rpn: RPNPositives) -> str:
    """``RPN positive anchors per image: 7.1 (median 4) among 2,033 in a sampling-free ...``"""
    return (f"RPN positive anchors per image: {rpn.positives:.1f} (median {rpn.median:g}) among "
            f"{rpn.used:,.0f} in a sampling-free RPN's loss (loss=focal_sampling_free divides its "
            f"terms by the positives; a sampled RPN averages 256 anchors per image)"
            + (f"; {rpn.images:,} of {rpn.total_images:,} images measured"
               if rpn.images < rpn.total_images else ""))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; the cells (names from the data) escaped: ``shown`` (control
    characters), then ``|`` and markdown's emphasis, code, link and HTML characters; ``header``
    is written as given."""
    def cell(text: str) -> str:
        escaped = shown(text, limit=200).replace("\\", "\\\\")
        for char in "|*_`[]<>#":
            escaped = escaped.replace(char, "\\" + char)
        return escaped

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell(c) for c in cells) + " |"

    return "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
                      *map(line, rows)])


def _coverage_table(first: str, rows: list, thresholds: Sequence[float]) -> str:
    header = [first, "boxes", *(f"IoU >= {t:g} (%)" for t in thresholds)]
    return _table(header, [[name, str(n), *(_pct(f[t]) for t in thresholds)]
                           for name, n, f in rows])


def _coverage_section(title: str, coverage: Coverage) -> list[str]:
    thresholds = list(coverage.overall)
    return [f"## {title}", "", _anchor_line(coverage.anchors), "",
            *(f"- {coverage_line(t, f)}" for t, f in coverage.overall.items()), "",
            _coverage_table("class", coverage.per_class, thresholds), "",
            _coverage_table("size (model input)", coverage.per_bucket, thresholds), ""]


def report_markdown(inspection: DataInspection, figures: Sequence[str] = ()) -> str:
    """report.md: counts, data problems, coverage tables (per class, per size bucket), advice and
    the figures (file names relative to the report)."""
    i = inspection
    counts = [[name, str(n)] for name, n in zip(i.class_names, i.counts, strict=True)]
    problems = _table(["problem", "count"], [[KIND_DESCRIPTIONS.get(k, k), str(v)]
                                             for k, v in i.problems.items()])
    lines = [f"# Data inspection: {shown(i.name)}, {i.split} split", "",
             *(f"- {line}" for line in summary_lines(i)[:4]), "",
             "## Boxes per class", "", _table(["class", "boxes"], counts), "",
             f"Imbalance (largest / smallest class): {_ratio(i.imbalance)}", "",
             "## Data problems the loader reported", "",
             problems if i.problems else "None found.",
             "", *_coverage_section("Anchor coverage", i.coverage)]
    if i.rpn is not None:
        lines += [f"- {rpn_line(i.rpn)}", ""]
    if i.fitted is not None:
        lines += _coverage_section("Anchor coverage with fitted anchors", i.fitted)
    lines += ["## Advice", "", *([f"- {text}" for text in advice(i)] or ["- none"]), ""]
    if figures:
        lines += ["## Figures", "", *(f"![{name}]({name})" for name in figures), ""]
    return "\n".join(lines)


def write_report(inspection: DataInspection, out_dir: str | Path,
                 figures: Sequence[str] = ()) -> Path:
    """Write ``out_dir/report.md``; returns its path."""
    path = Path(out_dir) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_markdown(inspection, figures))
    return path
