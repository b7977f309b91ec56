"""How far a detector's confidence is from its precision: the detection expected calibration
error (D-ECE, Kueppers et al., CVPR Workshops 2020, confidence-only form) and the reliability
diagram it summarises.

Detections with a score of at least ``min_score`` are sorted into ``bins`` equal-width
confidence bins over [``min_score``, 1]; in each bin, the precision is the fraction of its
detections that are true positives (matched at IoU 0.5 as COCOeval matches, see
:mod:`detector.study.errors`) and the confidence is their mean score. D-ECE is the mean of
|precision - confidence| over the bins, weighted by the number of detections in each:

    D-ECE = sum_b |B_b| / N * |prec(b) - conf(b)|

0 for a perfectly calibrated detector (of those scored at 0.8, 80 % are correct); the
larger, the further the scores are from meaning "probability of being right".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Reliability", "d_ece", "reliability"]


@dataclass
class Reliability:
    """A reliability diagram: B bins of [low, 1].

    Attributes:
        edges (ndarray[B + 1]): bin edges.
        count (ndarray[B] int64): detections per bin.
        confidence (ndarray[B]): mean score per bin (NaN where empty).
        precision (ndarray[B]): fraction of true positives per bin (NaN where empty).
    """

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    precision: np.ndarray

    @property
    def d_ece(self) -> float | None:
        """The weighted mean gap; None without detections."""
        total = self.count.sum()
        if total == 0:
            return None
        full = self.count > 0
        gaps = np.abs(self.precision[full] - self.confidence[full])
        return float((self.count[full] * gaps).sum() / total)


def reliability(scores: np.ndarray, is_tp: np.ndarray, *, bins: int = 10,
                min_score: float = 0.3) -> Reliability:
    """The reliability diagram of detections.

    Args:
        scores (ndarray[N]): confidences in [0, 1].
        is_tp (ndarray[N] bool): whether each is a true positive.
        bins: equal-width bins over [``min_score``, 1] (a score of 1 falls in the last).
        min_score: detections below it are left out (a detector's long tail of near-zero
            scores would otherwise fill the first bin).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    keep = scores >= min_score
    scores, is_tp = scores[keep], is_tp[keep]
    edges = np.linspace(min_score, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=scores, minlength=bins) / count
        precision = np.bincount(index, weights=is_tp.astype(np.float64), minlength=bins) / count
    return Reliability(edges, count, confidence, precision)


def d_ece(scores: np.ndarray, is_tp: np.ndarray, *, bins: int = 10,
          min_score: float = 0.3) -> float | None:
    """D-ECE of detections (see the module docstring); None when none scores ``min_score``."""
    return reliability(scores, is_tp, bins=bins, min_score=min_score).d_ece
