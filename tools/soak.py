"""Soak benchmark: does a long CPU run with periodic evaluation keep its memory flat?

    python tools/soak.py                       # 2,000 iterations of experiment=focal, CPU
    python tools/soak.py iterations=50 mark=20 schedule.iterations=... (any train.yaml key)

Trains the shapes recipe (``experiment=focal``) on the CPU for ``iterations`` iterations with an
evaluation every ``eval_period`` (default 200), records the resident memory (VmRSS of this
process, from /proc/self/status) at every log point, and prints the RSS after iteration
``mark`` (default 200: allocator pools, data workers and the first evaluation are warm by
then), at the end, and the difference. A benchmark, not a test: it takes ~20+ minutes on a
quiet 2-core machine. SIGTERM or Ctrl-C stops it early (after the current step or evaluation
batch) and it still reports. The per-log-point figures go to ``<output_dir>/soak_rss.csv``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_net  # noqa: E402  (sets THP_MEM_ALLOC_ENABLE before torch loads)
from hydra import compose, initialize_config_dir  # noqa: E402

from detector.engine.guard import StopSignal  # noqa: E402
from detector.engine.logger import TrainLogger  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
OWN_KEYS = {"iterations": 2000, "mark": 200, "eval_period": 200}


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux /proc; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def record_rss(csv: Path, samples: dict[int, float]) -> None:
    """Wrap ``TrainLogger.train_point``: note the RSS at every log point (stdout and ``csv``)."""
    original = TrainLogger.train_point

    def train_point(self, *, iteration: int, **kwargs) -> None:
        original(self, iteration=iteration, **kwargs)
        samples[iteration] = rss_mib()
        with csv.open("a") as f:
            f.write(f"{iteration},{samples[iteration]:.1f}\n")
        print(f"soak: iter {iteration} rss {samples[iteration]:.1f} MiB", flush=True)

    TrainLogger.train_point = train_point


def main(argv: list[str]) -> None:
    own = dict(OWN_KEYS)
    rest = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in own:
            own[key] = int(value)
        else:
            rest.append(arg)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    overrides = ["experiment=focal", "device=cpu", f"schedule.iterations={own['iterations']}",
                 f"train.eval_period={own['eval_period']}", "train.progress=false",
                 f"output_dir=outputs/soak/{stamp}", *rest]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train_net.check_train_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout),
                                  logging.FileHandler(out / "soak.log")])
    samples: dict[int, float] = {}
    (out / "soak_rss.csv").write_text("iteration,rss_mib\n")
    record_rss(out / "soak_rss.csv", samples)
    start, stop = time.perf_counter(), StopSignal()
    with stop.installed():  # SIGTERM/Ctrl-C: stop early and report what was measured so far
        summary = train_net.train(cfg, stop)
    report(samples, rss_mib(), mark=own["mark"], iterations=summary["iterations"],
           minutes=(time.perf_counter() - start) / 60, out=out)


def report(samples: dict[int, float], end: float, *, mark: int, iterations: int,
           minutes: float, out: Path) -> None:
    print(f"soak: {iterations} iterations in {minutes:.1f} min, {len(samples)} log points, "
          f"output {out}")
    marked = min((i for i in samples if i >= mark), default=None)
    if marked is None:
        print(f"soak: the run never reached iteration {mark}")
        return
    growth = 100 * (end - samples[marked]) / samples[marked]
    print(f"rss_after_iter_{marked}_mib: {samples[marked]:.1f}")
    print(f"rss_end_mib: {end:.1f} (after iteration {iterations})")
    print(f"rss_growth_pct: {growth:+.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
