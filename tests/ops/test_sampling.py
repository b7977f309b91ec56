"""Balanced sampler: exact counts per image, only candidates drawn, uniform selection."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.ops.sampling import draw_balanced

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)  # the same cases each run


def sample_masks(labels: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``draw_balanced`` as (pos_mask, neg_mask), BoolTensor[B, N] each."""
    return draw_balanced(labels, **kwargs).masks(labels.shape[1])


def random_labels(gen: torch.Generator, batch: int, rows: int, p_fg: float, p_bg: float):
    """LongTensor[B, N] of 1 / 0 / -1 with the given shares of foreground and background."""
    u = torch.rand(batch, rows, generator=gen)
    return torch.where(u < p_fg, 1, torch.where(u < p_fg + p_bg, 0, -1))


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    rows=st.integers(0, 80),
    p_fg=st.sampled_from([0.0, 0.05, 0.3, 0.9]),
    p_bg=st.sampled_from([0.0, 0.1, 0.6]),
    num_per_image=st.integers(1, 40),
    positive_fraction=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
)
def test_exact_counts_and_only_candidates(seed, batch, rows, p_fg, p_bg, num_per_image,
                                          positive_fraction):
    gen = torch.Generator().manual_seed(seed)
    labels = random_labels(gen, batch, rows, p_fg, min(p_bg, 1 - p_fg))
    pos, neg = sample_masks(labels, num_per_image=num_per_image,
                            positive_fraction=positive_fraction, generator=gen)
    assert pos.shape == neg.shape == labels.shape and pos.dtype == torch.bool
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    max_pos = int(num_per_image * positive_fraction)
    for b in range(batch):
        num_fg, num_bg = int((labels[b] == 1).sum()), int((labels[b] == 0).sum())
        expected_pos = min(num_fg, max_pos)
        assert int(pos[b].sum()) == expected_pos
        assert int(neg[b].sum()) == min(num_bg, num_per_image - expected_pos)


@pytest.mark.parametrize(("num_per_image", "positive_fraction", "max_pos"), [
    (3, 0.5, 1), (5, 0.5, 2), (7, 0.25, 1), (9, 0.3, 2),
])
def test_max_positives_are_floored_not_rounded(num_per_image, positive_fraction, max_pos):
    """size x fraction not a whole number (3 x 0.5 = 1.5): at most floor of it are positives,
    and background fills the rest; rounding (2 for 1.5 and 2.5) fails here."""
    labels = torch.tensor([[1] * 10 + [0] * 10])
    pos, neg = sample_masks(labels, num_per_image=num_per_image,
                            positive_fraction=positive_fraction,
                            generator=torch.Generator().manual_seed(0))
    assert int(pos.sum()) == max_pos
    assert int(neg.sum()) == num_per_image - max_pos


def test_rpn_and_roi_configurations():
    """256 at 0.5 (RPN) and 512 at 0.25 (ROI head), with plenty and with scarce foreground."""
    labels = torch.full((2, 5000), 0)
    labels[0, :1000] = 1  # plenty of foreground
    labels[1, :10] = 1  # scarce foreground: background fills up the sample
    labels[:, 4000:] = -1
    gen = torch.Generator().manual_seed(0)
    pos, neg = sample_masks(labels, num_per_image=256, positive_fraction=0.5, generator=gen)
    assert pos.sum(1).tolist() == [128, 10] and neg.sum(1).tolist() == [128, 246]
    pos, neg = sample_masks(labels, num_per_image=512, positive_fraction=0.25, generator=gen)
    assert pos.sum(1).tolist() == [128, 10] and neg.sum(1).tolist() == [384, 502]


def test_selection_is_uniform_among_candidates():
    """4000 independent draws in one call (one per row); each candidate's selection frequency must
    be close to k/n, and a chi-square statistic over candidates must be of the size chance gives.

    Per row: 10 foreground (3 taken: 0.3 each), 20 background (7 taken: 0.35 each), 5 ignored.
    The bounds are several standard deviations wide; a sampler that prefers low or high indices,
    or the order of the keys, fails them by orders of magnitude.
    """
    draws = 4000
    row = torch.tensor([1] * 5 + [0] * 10 + [-1] * 5 + [1] * 5 + [0] * 10)
    gen = torch.Generator().manual_seed(0)
    pos, neg = sample_masks(row.expand(draws, -1), num_per_image=10, positive_fraction=0.3,
                            generator=gen)
    for mask, kind, expected in ((pos, 1, 0.3), (neg, 0, 0.35)):
        counts = mask[:, row == kind].sum(0).float()
        freq = counts / draws
        assert ((freq - expected).abs() < 0.05).all(), freq
        chi2 = ((counts - draws * expected) ** 2 / (draws * expected)).sum()
        assert chi2 < 3 * (counts.numel() - 1), chi2
    assert not (pos | neg)[:, row == -1].any()


def test_generator_makes_draws_reproducible():
    labels = random_labels(torch.Generator().manual_seed(1), 3, 500, 0.2, 0.5)
    first = sample_masks(labels, num_per_image=64, positive_fraction=0.25,
                         generator=torch.Generator().manual_seed(7))
    second = sample_masks(labels, num_per_image=64, positive_fraction=0.25,
                          generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_draw_lists_distinct_rows_and_untaken_positives_are_not_foreground():
    labels = random_labels(torch.Generator().manual_seed(2), 4, 300, 0.02, 0.5)
    sample = draw_balanced(labels, num_per_image=32, positive_fraction=0.5,
                           generator=torch.Generator().manual_seed(3))
    assert sample.pos_index.shape == (4, 16) and sample.neg_index.shape == (4, 32)
    for index in (sample.pos_index, sample.neg_index):
        assert all(len(set(r.tolist())) == len(r) for r in index)
    untaken = labels.gather(1, sample.pos_index)[~sample.pos_taken]
    assert (untaken != 1).all()
    pos, neg = sample.masks(300)
    assert torch.equal(pos.sum(1), sample.pos_taken.sum(1))
    assert torch.equal(neg.sum(1), sample.neg_taken.sum(1))


def test_no_rows_and_nothing_to_sample():
    for labels in (torch.zeros(2, 0, dtype=torch.long), torch.full((2, 9), -1)):
        pos, neg = sample_masks(labels, num_per_image=8, positive_fraction=0.5)
        assert not pos.any() and not neg.any()


@pytest.mark.gpu
def test_cuda_counts(cuda_device):
    labels = random_labels(torch.Generator().manual_seed(4), 3, 2000, 0.05, 0.6).to(cuda_device)
    gen = torch.Generator(device=cuda_device).manual_seed(0)
    pos, neg = sample_masks(labels, num_per_image=256, positive_fraction=0.5, generator=gen)
    assert pos.device.type == "cuda"
    expected_pos = (labels == 1).sum(1).clamp(max=128)
    assert torch.equal(pos.sum(1), expected_pos)
    assert torch.equal(neg.sum(1), torch.minimum((labels == 0).sum(1), 256 - expected_pos))
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
