"""DataLoader workers ignore SIGINT/SIGTERM (the main process owns stopping): a signal that
reaches them, as one to the whole process group does, leaves the loader working; they start with
both signals blocked, so that none can kill them before they ignore it.

The tests set the main process's own handlers and mask first: a pytest started with SIGINT
ignored (``nohup``, a background job of a non-interactive shell) would otherwise hand the
workers an ignored SIGINT whatever the code under test does."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch.utils.data import Dataset

from detector.data import ShapesDetection, build_dataloader, build_transforms
from detector.data.worker_signals import STOP_SIGNALS, StopSafeDataLoader, ignore_stop_signals


@pytest.fixture(autouse=True)
def plain_signals():
    """SIGINT raises KeyboardInterrupt and SIGTERM terminates (a Python program's defaults),
    neither blocked, in the main process during each test; then back to what pytest had."""
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    transforms = build_transforms(train=False, min_size=64, max_size=64)
    return ShapesDetection(root=root, split="val", num_train=2, num_val=8, image_size=64,
                           transforms=transforms)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signalled_workers_keep_loading(val_set, signum):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not ignored already
    loader = build_dataloader(dataset=val_set, batch_size=1, train=False, num_workers=2)
    batches = iter(loader)
    ids = [int(next(batches)["image_ids"][0])]
    pids = [w.pid for w in batches._workers]
    for pid in pids:
        os.kill(pid, signum)  # what a signal to the process group does to them
    ids += [int(b["image_ids"][0]) for b in batches]  # main: "worker ... killed by signal"
    assert sorted(ids) == sorted(val_set.coco.getImgIds())


def test_starting_workers_leaves_the_main_signal_mask_alone(val_set):
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    loader = build_dataloader(dataset=val_set, batch_size=4, train=False, num_workers=1)
    assert len(list(loader)) == 2
    after = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert after == before and not set(STOP_SIGNALS) & after


class _Masks(Dataset):
    """Item i: the signal mask a worker had on entering its ``worker_init_fn`` (at fork), and
    the one it has now, as sorted signal numbers."""

    at_start: list[int] | None = None

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        now = sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return {"at_start": torch.tensor(_Masks.at_start), "now": torch.tensor(now)}


def _record_then_ignore(worker_id: int) -> None:
    _Masks.at_start = sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    ignore_stop_signals()


def test_workers_start_with_stop_signals_blocked_then_unblock_them():
    """The window between fork and ``worker_init_fn`` is closed: the worker's first recorded
    mask holds SIGINT and SIGTERM (the main process's does not), the mask it loads with not."""
    assert not set(STOP_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, [])
    loader = StopSafeDataLoader(_Masks(), batch_size=None, num_workers=1,
                                worker_init_fn=_record_then_ignore)
    stop = {int(s) for s in STOP_SIGNALS}
    for item in loader:
        assert stop <= set(item["at_start"].tolist())
        assert not stop & set(item["now"].tolist())
