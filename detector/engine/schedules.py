"""Training schedules: which parameters train and which losses count, phase by phase.

End-to-end ("approximate joint") training is one phase in which everything trains on the sum of all
four losses. The paper's 4-step alternating training is four phases:

1. ``rpn``: a copy of the initial model trains backbone + RPN on the RPN losses.
2. ``fast_rcnn``: the main model (its own backbone, from the initial weights) trains backbone +
   ROI head on the ROI losses, fed the proposals of the step-1 model.
3. ``rpn_finetune``: the main model takes the step-1 RPN head; its shared conv layers are frozen
   and only the RPN head trains.
4. ``fast_rcnn_finetune``: shared conv and RPN frozen; the ROI head trains on the proposals of
   the step-3 RPN (the main model's own).

The result is one model whose RPN and ROI head share the conv layers. The model never branches on
the schedule; the engine applies each ``Phase``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Phase", "end_to_end", "four_step"]

RPN_LOSSES = ("loss_rpn_cls", "loss_rpn_box")
ROI_LOSSES = ("loss_cls", "loss_box")


@dataclass(frozen=True)
class Phase:
    """One stretch of training.

    Attributes:
        name (str): shown in progress bars, logs and checkpoints.
        iterations (int): optimiser steps.
        train_modules (tuple[str, ...]): attributes of the model whose parameters train (within
            what the model itself leaves trainable, e.g. unfrozen backbone blocks); the others are
            frozen and kept in eval mode (BN statistics fixed).
        losses (tuple[str, ...]): loss names summed for the gradient.
        model (str): which model trains: "main", or "rpn" (the step-1 copy).
        proposals_from (str | None): model whose RPN supplies the proposals; None = own RPN.
        start (str | None): action when the phase begins: "copy_initial_to_rpn" (step 1),
            "take_rpn_head" (step 3), None.
    """

    name: str
    iterations: int
    train_modules: tuple[str, ...]
    losses: tuple[str, ...]
    model: str = "main"
    proposals_from: str | None = None
    start: str | None = None


def end_to_end(*, iterations: int) -> list[Phase]:
    """Approximate joint training: one phase, all parts, all four losses."""
    return [
        Phase(
            name="end_to_end", iterations=int(iterations),
            train_modules=("backbone", "rpn_head", "roi_head"), losses=RPN_LOSSES + ROI_LOSSES,
        )
    ]


def four_step(
    *, rpn_iterations: int, fast_rcnn_iterations: int, rpn_finetune_iterations: int,
    fast_rcnn_finetune_iterations: int,
) -> list[Phase]:
    """The paper's 4-step alternating training (see the module docstring)."""
    return [
        Phase(name="rpn", iterations=int(rpn_iterations), train_modules=("backbone", "rpn_head"),
              losses=RPN_LOSSES, model="rpn", start="copy_initial_to_rpn"),
        Phase(name="fast_rcnn", iterations=int(fast_rcnn_iterations),
              train_modules=("backbone", "roi_head"), losses=ROI_LOSSES, proposals_from="rpn"),
        Phase(name="rpn_finetune", iterations=int(rpn_finetune_iterations),
              train_modules=("rpn_head",), losses=RPN_LOSSES, start="take_rpn_head"),
        Phase(name="fast_rcnn_finetune", iterations=int(fast_rcnn_finetune_iterations),
              train_modules=("roi_head",), losses=ROI_LOSSES),
    ]
