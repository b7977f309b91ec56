"""Compare training runs side by side: python tools/compare.py RUN_OR_SWEEP [...] [--out DIR]

Arguments are run folders, sweep folders (outputs/multirun/<date_time>) or globs
('outputs/focal_end_to_end/*'). Writes summary.md, summary.csv, curves.png, pr_curves.png and,
when the runs differ in one numeric key that changes the training (e.g. optimizer.lr; not
train.eval_period, log_period, checkpoint_period, ...), lr_sweep.png into --out (default:
<the one folder given>/compare, or outputs/compare/<date_time>); prints the summary and where the
report is. Runs that differ only by seed are grouped (mean +- std); for two groups the
difference comes with a 95 % t-interval, paired by seed when the seeds match. A run whose files
are malformed is skipped, named with the reason in one line ("skipped 2 runs: ..."); each run
counts once however often the arguments name it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from detector.errors import UserError  # noqa: E402
from detector.study import compare  # noqa: E402
from detector.study.runs import report_dir  # noqa: E402
from detector.untrusted import shown  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders, sweep folders or globs")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    args = parser.parse_args(argv)
    try:
        report = compare(args.runs, args.out or report_dir(args.runs, "compare"))
    except UserError as error:
        print(f"error: {shown(str(error), limit=None)}", file=sys.stderr)
        return 2
    print(report.text)
    print("report:", shown(report.out_dir, limit=None),
          "(" + ", ".join(p.name for p in report.files) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
