"""Does a long CPU run with periodic evaluation keep its memory flat? (``tools/soak.py``)

``main(argv)`` trains the shapes recipe (``experiment=focal``) on the CPU through
``detector_cli.train.train``, records the resident memory of this process (``rss_mib``) and the
data workers' private memory (``workers_private_mib``) at every log point (``record_rss``) and
prints the summary (``report``). Its own keys (``OWN_KEYS``: iterations, mark, eval_period) come
before any train.yaml override.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from detector.engine.guard import StopSignal
from detector.engine.logger import TrainLogger
from detector_cli.checks import CONFIG_DIR, check_train_config
from detector_cli.cli import quote_path_overrides
from detector_cli.train import train

__all__ = ["OWN_KEYS", "main", "private_mib", "record_rss", "report", "rss_mib",
           "workers_private_mib"]

OWN_KEYS = {"iterations": 2000, "mark": 200, "eval_period": 200}


def _kib_fields(path: Path, names: tuple[str, ...]) -> float:
    """Sum of the ``Name:  N kB`` fields of a /proc file in MiB; NaN if it cannot be read."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return float("nan")
    return sum(int(line.split()[1]) for line in lines if line.split(":")[0] in names) / 1024


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process (default: this one) in MiB (Linux /proc; NaN elsewhere)."""
    return _kib_fields(Path(f"/proc/{pid}/status"), ("VmRSS",))


def private_mib(pid: int | str = "self") -> float:
    """Memory only this process holds (private clean + dirty pages, "USS") in MiB. For a forked
    DataLoader worker this is what it added itself: its RSS also counts every page it still
    shares with the main process, so it jumps with the main process's size at each fork."""
    return _kib_fields(Path(f"/proc/{pid}/smaps_rollup"), ("Private_Clean", "Private_Dirty"))


def workers_private_mib() -> float:
    """Summed private memory of this process's children (the DataLoader workers) in MiB; 0
    without children or /proc."""
    pids: list[str] = []
    for task in Path("/proc/self/task").glob("*"):
        try:
            pids += (task / "children").read_text().split()
        except OSError:
            continue
    sizes = [private_mib(pid) for pid in pids]
    return sum(size for size in sizes if size == size)  # a child that just exited reads NaN


def record_rss(csv: Path, samples: dict[int, float], workers: dict[int, float]) -> None:
    """Wrap ``TrainLogger.train_point``: note the RSS of this process and the private memory of
    its data workers at every log point (stdout and ``csv``)."""
    original = TrainLogger.train_point

    def train_point(self, *, iteration: int, **kwargs) -> None:
        original(self, iteration=iteration, **kwargs)
        samples[iteration], workers[iteration] = rss_mib(), workers_private_mib()
        with csv.open("a") as f:
            f.write(f"{iteration},{samples[iteration]:.1f},{workers[iteration]:.1f}\n")
        print(f"soak: iter {iteration} rss {samples[iteration]:.1f} MiB, data workers' private "
              f"{workers[iteration]:.1f} MiB", flush=True)

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
                 f"output_dir=outputs/soak/{stamp}", *quote_path_overrides(rest)]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    check_train_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout),
                                  logging.FileHandler(out / "soak.log")])
    samples: dict[int, float] = {}
    workers: dict[int, float] = {}
    (out / "soak_rss.csv").write_text("iteration,rss_mib,workers_private_mib\n")
    record_rss(out / "soak_rss.csv", samples, workers)
    start, stop = time.perf_counter(), StopSignal()
    with stop.installed():  # SIGTERM/Ctrl-C: stop early and report what was measured so far
        summary = train(cfg, stop)
    lines = report(samples, rss_mib(), workers, mark=own["mark"],
                   iterations=summary["iterations"], minutes=(time.perf_counter() - start) / 60,
                   out=out)
    print("\n".join(lines))


def report(samples: dict[int, float], end: float, workers: dict[int, float], *, mark: int,
           iterations: int, minutes: float, out: Path) -> list[str]:
    """The summary lines: the main process's RSS at the first log point at or after ``mark``
    and at the end (``end``), its growth in percent, and the data workers' private memory at
    the same two log points (the last log point standing in for the end: the workers are gone by then;
    they are re-forked every epoch, so their private memory restarts from near 0 each time)."""
    lines = [f"soak: {iterations} iterations in {minutes:.1f} min, {len(samples)} log points, "
             f"output {out}"]
    marked = min((i for i in samples if i >= mark), default=None)
    if marked is None:
        return [*lines, f"soak: the run never reached iteration {mark}"]
    growth = 100 * (end - samples[marked]) / samples[marked]
    last = max(workers)
    lines += [f"rss_after_iter_{marked}_mib: {samples[marked]:.1f}",
              f"rss_end_mib: {end:.1f} (after iteration {iterations})",
              f"rss_growth_pct: {growth:+.2f}"]
    if workers.get(marked, 0) > 0:
        grown = 100 * (workers[last] - workers[marked]) / workers[marked]
        lines.append(f"workers_private_mib: {workers[marked]:.1f} at iteration {marked}, "
                     f"{workers[last]:.1f} at iteration {last} ({grown:+.2f} %)")
    return lines
