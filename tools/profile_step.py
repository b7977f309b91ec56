"""Where a training step's time goes, by operator group:

    python tools/profile_step.py                          # the make train run (experiment=focal)
    python tools/profile_step.py model=vgg16_bn_roipool precision=fp32 --timed 10 --profiled 5

Builds exactly the run ``python tools/train_net.py experiment=focal key=value ...`` would build
(the same config, model, data loader and Trainer; any train.yaml key can be overridden) in a
temporary folder, then trains ``--warmup`` steps (not measured: allocator pools, oneDNN kernels,
data workers warming up), ``--timed`` steps on the clock alone (median and mean seconds per step,
the number to compare), one step of the profiler's own warm-up and ``--profiled`` steps under
``torch.profiler`` (CPU time by operator,
grouped: convolutions forward and backward, batch norm, matrix products, RoI pooling, the
optimiser, waiting for data, ...), and stops without the final evaluation. The learning-rate
schedule is the configured run's, so the steps are the first steps of that run.

A benchmark, not a test: run it alone on a quiet machine. ``--top K`` also prints the K
operators with the most CPU time; ``--trace FILE`` writes a Chrome trace (chrome://tracing,
https://ui.perfetto.dev).

The work is ``detector_cli.profile``; this file is its command line.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read when torch loads (see tools/train_net.py)

from detector_cli.profile import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
