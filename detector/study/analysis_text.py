"""``analysis.md``: one row per run and per seed group (each error type's count and dAP50, the
D-ECE), the difference of two groups with a 95 % interval, and the per-class table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from detector.study.analysis import AnalysisOptions, Measure, RunAnalysis, group_values
from detector.study.errors import ERROR_TYPES
from detector.study.runs import skipped_line
from detector.study.stats import difference, mean_std
from detector.study.summary import Study, value_of
from detector.study.tables import markdown_table
from detector.untrusted import shown_text

__all__ = ["analysis_text"]

MISSING = "-"


def _measures() -> dict[str, Measure]:
    """Name -> value of an analysed run: AP50, each type's count and dAP50, D-ECE."""
    found: dict[str, Measure] = {"AP50": lambda a: a.dap.get("AP50")}
    for kind in ERROR_TYPES:
        found[f"{kind} n"] = lambda a, k=kind: a.counts.get(k)
        found[f"{kind} dAP50"] = lambda a, k=kind: a.dap.get(k)
    found["D-ECE"] = lambda a: a.d_ece
    return found


def _cell(count: int | None, gain: float | None) -> str:
    if count is None:
        return MISSING
    return f"{count} / {gain:+.3f}" if gain is not None else str(count)


def _run_rows(study: Study, analyses: Mapping[str, RunAnalysis]) -> list[list[str]]:
    rows = [["run", *study.keys, "AP50", *(f"{k} (n / dAP50)" for k in ERROR_TYPES), "D-ECE"]]
    for run in study.runs:
        a = analyses[run.name]
        keys = [str(value_of(run, k)) for k in study.keys]
        if not a.analysed:
            rows.append([run.name, *keys, f"not analysed: {a.note}",
                         *([MISSING] * (len(ERROR_TYPES) + 1))])
            continue
        cells = [_cell(a.counts.get(k), a.dap.get(k)) for k in ERROR_TYPES]
        ece = MISSING if a.d_ece is None else f"{a.d_ece:.3f}"
        rows.append([run.name, *keys, f"{a.dap['AP50']:.4f}", *cells, ece])
    return rows


def _mean_pm(values: list[float], digits: int) -> str:
    if not values:
        return MISSING
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} +- {std:.{digits}f}"


def _group_rows(study: Study, analyses: Mapping[str, RunAnalysis]) -> list[list[str]]:
    measures = _measures()
    rows = [["group", "n", *measures]]
    for group in study.groups:
        done = sum(analyses[r.name].analysed for r in group.runs)
        cells = [_mean_pm(list(group_values(group, analyses, m).values()),
                          1 if name.endswith(" n") else 3 if name == "D-ECE" or "dAP" in name
                          else 4)
                 for name, m in measures.items()]
        rows.append([group.label, f"{done}/{len(group.runs)}", *cells])
    return rows


def _difference_lines(study: Study, analyses: Mapping[str, RunAnalysis]) -> list[str]:
    if len(study.groups) != 2:
        return []
    a, b = study.groups
    lines = []
    for name, measure in _measures().items():
        found = difference(group_values(a, analyses, measure), group_values(b, analyses, measure))
        if found is not None:
            lines.append(f"{name}: {found}")
    return lines


def _class_rows(study: Study, analyses: Mapping[str, RunAnalysis]) -> list[list[str]]:
    rows = [["group", "class", "train instances", "AP50", "D-ECE"]]
    for group in study.groups:
        done = [analyses[r.name] for r in group.runs if analyses[r.name].analysed]
        for name in dict.fromkeys(n for a in done for n in a.class_names):
            freq = {a.frequency.get(name) for a in done if a.frequency}
            ap = [a.class_ap50[name] for a in done if a.class_ap50.get(name) is not None]
            ece = [a.class_d_ece[name] for a in done if a.class_d_ece.get(name) is not None]
            shown = MISSING if not freq else "/".join(str(f) for f in sorted(freq, key=str))
            rows.append([group.label, name, shown, _mean_pm(ap, 4), _mean_pm(ece, 3)])
    return rows


def _left_out_line(left_out: Counter) -> list[str]:
    if not left_out:
        return []
    reasons = ", ".join(f"{n} {why}" for why, n in left_out.most_common())
    return [f"Gallery (worst/): left out {sum(left_out.values())} images ({reasons}).", ""]


def analysis_text(study: Study, analyses: Mapping[str, RunAnalysis], options: AnalysisOptions,
                  *, skipped: Sequence[tuple[str, str]] = (),
                  left_out: Counter | None = None) -> str:
    """The report's markdown (see the module docstring); ``skipped``: runs left out (malformed
    files) with their reasons; ``left_out``: gallery images not drawn, by reason."""
    done = sum(a.analysed for a in analyses.values())
    parts = [f"# Error analysis of {len(study.runs)} runs ({done} analysed)", "",
             *([skipped_line(skipped), ""] if skipped else []),
             *_left_out_line(left_out or Counter()),
             f"Error types as in TIDE (foreground IoU {options.t_f:g}, background IoU "
             f"{options.t_b:g}): n counts the errors of detections scored >= "
             f"{options.min_score:g} (misses: boxes none of them found); dAP50 is the AP50 "
             f"gained by fixing that type alone (COCOeval on all detections, corrected by the "
             f"oracle). D-ECE: |precision - confidence| over {options.bins} bins of the "
             f"detections scored >= {options.calib_min_score:g}, weighted by count.", "",
             "## Runs", "", markdown_table(_run_rows(study, analyses))]
    if any(len(g.runs) > 1 for g in study.groups):
        parts += ["", "## Groups (runs that differ only by seed: mean +- std over analysed runs)",
                  "", markdown_table(_group_rows(study, analyses))]
    diffs = _difference_lines(study, analyses)
    if diffs:
        a, b = study.groups
        parts += ["", f"## Difference (B - A): [{b.label}] - [{a.label}]", "",
                  *(f"- {line}" for line in diffs)]
    if done:
        parts += ["", "## Per class (train instances: in the train split)", "",
                  markdown_table(_class_rows(study, analyses))]
    return shown_text("\n".join(parts)) + "\n"
