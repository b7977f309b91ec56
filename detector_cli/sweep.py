"""Hydra callback that keeps a sweep's index (registered in configs/train.yaml, hydra.callbacks:
``_target_: detector_cli.sweep.SweepIndex``), and the ${job_folder:...} resolver that names each
job's folder (hydra.sweep.subdir), registered when this module is imported (by
``detector_cli.train``, and by Hydra itself when it builds the callback).

After each job of a multirun it appends the job's overrides, folder and outcome to
<sweep dir>/sweep.jsonl and rewrites <sweep dir>/sweep.md (detector.study.sweep_index); at the
end it names them and the command that compares the runs. Single runs are left alone.
"""

from __future__ import annotations

import logging
import shlex
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from detector.study.sweep_index import (
    INDEX_JSONL,
    INDEX_MD,
    job_entry,
    job_folder_name,
    read_index,
    record_job,
)

log = logging.getLogger("sweep")
OmegaConf.register_new_resolver("job_folder", job_folder_name, replace=True)


class SweepIndex(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = config.hydra  # not job_return.hydra_cfg: a copy that resolves ${now:} anew
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        error = None
        if job_return.status == JobStatus.FAILED:
            error = f"{type(job_return._return_value).__name__}: {job_return._return_value}"
            error = error.splitlines()[0]
        entry = job_entry(job=hydra_cfg.job.num, overrides=list(hydra_cfg.overrides.task),
                          run_dir=hydra_cfg.runtime.output_dir, sweep_dir=hydra_cfg.sweep.dir,
                          error=error)
        record_job(hydra_cfg.sweep.dir, entry)
        log.info("sweep index: job %d %s (%s)", entry["job"], entry["status"], entry["dir"])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        entries = read_index(sweep_dir)
        counts = {s: sum(e["status"] == s for e in entries) for s in {e["status"] for e in entries}}
        log.info("sweep done: %d jobs (%s); index %s/%s and %s/%s",
                 len(entries), ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
                 sweep_dir, INDEX_MD, sweep_dir, INDEX_JSONL)
        log.info("compare them: python tools/compare.py %s", shlex.quote(str(sweep_dir)))
