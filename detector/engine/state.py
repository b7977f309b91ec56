"""What exact resume restores besides weights and optimiser: the random number generators and the
position in the stream of training batches.

Random sources of a training step: torch's global generator (RPN/ROI sampling, dropout, ...) on
the CPU and on every CUDA device, NumPy's and Python's global generators (anything else), the
batch order (a function of ``(seed, epoch)`` in ``AspectRatioGroupedBatchSampler``) and the
augmentation (a function of ``(seed, epoch, index)`` in ``SeededSamples``). The first three are
captured by ``capture_rng_state``; the last two only need ``BatchStream``'s (epoch, position).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from detector.data.samplers import AspectRatioGroupedBatchSampler

__all__ = ["BatchStream", "capture_rng_state", "restore_rng_state"]

log = logging.getLogger("detector.train")


def capture_rng_state() -> dict:
    """The state of torch's (CPU and every CUDA device), NumPy's and Python's global generators,
    as tensors and plain values (loadable with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def restore_rng_state(state: dict) -> None:
    """Put back what ``capture_rng_state`` returned (CUDA states only when the device count
    matches)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class BatchStream:
    """Endless training batches, epoch after epoch, that know where they are.

    ``state_dict()`` is ``{"epoch", "position"}`` (batches of the epoch already taken);
    after ``load_state_dict`` the next batch is the one an uninterrupted stream would yield.
    With an ``AspectRatioGroupedBatchSampler`` (what ``build_dataloader`` makes for training)
    the skipped batches are skipped by index, without loading them; any other loader is replayed
    batch by batch (slow, and exact only if its order is reproducible).

    Args:
        loader (DataLoader): the training loader.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.epoch = 0
        self.position = 0
        self._iterator: Iterator | None = None

    def _seed(self) -> int | None:
        return getattr(getattr(self.loader, "batch_sampler", None), "seed", None)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self._seed()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if state.get("seed") != self._seed():
            log.warning("the data seed differs from the checkpoint's (%s vs %s): the resumed run "
                        "sees other batches than the interrupted one would have",
                        self._seed(), state.get("seed"))
        self._iterator = None

    def start(self) -> None:
        """Open the iterator of the current epoch at the current position (done lazily by
        ``next``; call it to do it now, e.g. before restoring random generators that opening a
        loader without its own generator would consume)."""
        sampler = getattr(self.loader, "batch_sampler", None)
        if isinstance(sampler, AspectRatioGroupedBatchSampler):
            sampler.set_epoch(self.epoch, skip=self.position)
            self._iterator = iter(self.loader)
            return
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self._iterator = iter(self.loader)
        if self.position:
            log.warning("replaying %d batches to resume (the loader's sampler cannot skip)",
                        self.position)
        for _ in range(self.position):
            next(self._iterator)

    def close(self) -> None:
        """Drop the open loader iterator (its worker processes exit); the position is kept."""
        self._iterator = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict:
        for _ in range(2):  # the current epoch, then (if it just ended) the next one
            if self._iterator is None:
                self.start()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
                continue
            self.position += 1
            return batch
        raise RuntimeError("the training loader yields no batches (empty dataset?)")
