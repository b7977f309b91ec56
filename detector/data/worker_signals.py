"""DataLoader workers leave stopping to the main process.

``timeout``, Slurm's ``scancel`` and systemd send SIGTERM to a job's whole process group, and
Ctrl-C in a terminal sends SIGINT to the foreground group: the DataLoader workers get the
signal too. PyTorch's workers die on a SIGTERM that does not come from their parent, and the
main process then fails with "DataLoader worker (pid ...) is killed by signal: Terminated"
before it can write a checkpoint. Here the workers ignore SIGINT and SIGTERM; the main process
(``detector.engine.guard.StopSignal``) decides when to stop, and the DataLoader shuts its
workers down as usual (through its queues; a worker also exits once its parent is gone).

The window between a worker's fork and its ``worker_init_fn`` is closed by blocking both
signals in the main process while the workers start (``StopSafeDataLoader``): a forked worker
inherits the blocked mask, sets SIG_IGN, then unblocks. A signal sent meanwhile to the main
process stays pending and is delivered when it unblocks.
"""

from __future__ import annotations

import signal

from torch.utils.data import DataLoader

__all__ = ["STOP_SIGNALS", "StopSafeDataLoader", "ignore_stop_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_stop_signals() -> None:
    """In a DataLoader worker: ignore SIGINT and SIGTERM (then unblock them)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class StopSafeDataLoader(DataLoader):
    """A DataLoader whose worker processes start with SIGINT/SIGTERM blocked, so that they are
    never killed by a stop signal before their ``worker_init_fn`` (which must call
    ``ignore_stop_signals``) has run."""

    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super()._get_iterator()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
