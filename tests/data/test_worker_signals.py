"""DataLoader workers ignore SIGINT/SIGTERM (the main process owns stopping): a signal that
reaches them, as one to the whole process group does, leaves the loader working."""

from __future__ import annotations

import os
import signal

import pytest

from detector.data import ShapesDetection, build_dataloader, build_transforms
from detector.data.worker_signals import STOP_SIGNALS


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    transforms = build_transforms(train=False, min_size=64, max_size=64)
    return ShapesDetection(root=root, split="val", num_train=2, num_val=8, image_size=64,
                           transforms=transforms)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signalled_workers_keep_loading(val_set, signum):
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
