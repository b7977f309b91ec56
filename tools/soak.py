"""Soak benchmark: does a long CPU run with periodic evaluation keep its memory flat?

    python tools/soak.py                       # 2,000 iterations of experiment=focal, CPU
    python tools/soak.py iterations=50 mark=20 schedule.iterations=... (any train.yaml key)

Trains the shapes recipe (``experiment=focal``) on the CPU for ``iterations`` iterations with an
evaluation every ``eval_period`` (default 200), records the resident memory (VmRSS of this
process, from /proc/self/status) and the data workers' private memory at every log point, and
prints the RSS after iteration ``mark`` (default 200: allocator pools, data workers and the
first evaluation are warm by then), at the end, and the difference. A benchmark, not a test:
~85 minutes on a quiet 2-core AVX2 CPU (fp32, ~2.4 s per step), about a quarter of that where
the CPU has bf16. SIGTERM or Ctrl-C stops it early (after the current step or evaluation
batch) and it still reports. The per-log-point figures go to ``<output_dir>/soak_rss.csv``.

The work is ``detector_cli.soak``; this file is its command line.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read when torch loads (see tools/train_net.py)

from detector_cli.soak import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
