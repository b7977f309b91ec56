"""Where and why runs differ: python tools/analyze.py RUN_OR_SWEEP [...] [--out DIR]

Arguments are run folders, sweep folders (outputs/multirun/<date_time>) or globs, as for
tools/compare.py. Each finished run is analysed from the detections its evaluation wrote
(final_results.json, or checkpoints/*_val_results.json from tools/eval.py): the TIDE error types
(cls, loc, both, dupe, bkg, miss) with their counts and the AP50 gained by fixing each, the
detection calibration error (D-ECE) with a reliability diagram, the confusion matrix, per-class
AP50 against the class's frequency in the train split, and a gallery of the worst images. Runs
that differ only by seed are grouped (mean +- std); for two groups the differences come with a
95 % t-interval. Writes analysis.md, errors.png, calibration.png, confusion.png,
class_ap_vs_frequency.png and worst/ into --out (default: <the one folder given>/analysis, or
outputs/analysis/<date_time>) and prints analysis.md. Runs with malformed files are skipped with
the reason; gallery images are read only under the run's dataset root.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from detector.errors import UserError  # noqa: E402
from detector.study import AnalysisOptions, analyze  # noqa: E402
from detector.study.runs import report_dir  # noqa: E402
from detector.untrusted import shown  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders, sweep folders or globs")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument("--min-score", type=float, default=0.5,
                        help="operating point of the error counts, confusion and gallery")
    parser.add_argument("--worst", type=int, default=6, help="gallery images per run")
    args = parser.parse_args(argv)
    if not 0 <= args.min_score <= 1 or args.worst < 0:
        print("error: --min-score must be in [0, 1] and --worst >= 0", file=sys.stderr)
        return 2
    try:
        report = analyze(args.runs, args.out or report_dir(args.runs, "analysis"),
                         AnalysisOptions(min_score=args.min_score, worst=args.worst))
    except UserError as error:
        print(f"error: {shown(str(error), limit=None)}", file=sys.stderr)
        return 2
    print(report.text)
    print("report:", shown(report.out_dir, limit=None),
          "(" + ", ".join(p.name for p in report.files) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
