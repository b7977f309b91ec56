"""Training schedules: which parameters train and which losses count, phase by phase.

End-to-end ("approximate joint") training is one phase in which everything trains on the sum of all
four losses. The paper's 4-step alternating training is four phases:

1. ``rpn``: a copy of the initial model trains backbone + RPN on the RPN losses.
2. ``fast_rcnn``: the main model (its own backbone, from the initial weights) trains backbone +
   ROI head on the ROI losses, fed the proposals of the step-1 model. With
   ``step2_backbone="rpn"`` it first takes the step-1 model's backbone instead (start action
   ``take_rpn_backbone``): what a run from random initialisation needs, where re-initialising
   would leave step 2 training a fresh backbone in a fraction of the budget. With
   ``step2_losses="all"`` (not the paper's) step 2 also trains the main model's RPN head on the RPN
   losses, still fed the step-1 proposals: from random weights the backbone learns mostly from the
   RPN's dense loss, which the paper's step 2 lacks. With ``step2_backbone="rpn"`` it then takes
   the step-1 RPN head as well (start action ``take_rpn_model``).
3. ``rpn_finetune``: the main model takes the step-1 RPN head (with ``step2_losses="all"`` it keeps
   its own, trained on its backbone in step 2: start action ``release_rpn``); its shared conv
   layers are frozen and only the RPN head trains.
4. ``fast_rcnn_finetune``: shared conv and RPN frozen; the ROI head trains on the proposals of
   the step-3 RPN (the main model's own).

The result is one model whose RPN and ROI head share the conv layers. The model never branches on
the schedule; the engine applies each ``Phase``.
"""

from __future__ import annotations

from dataclasses import dataclass

from detector.errors import OptionError

__all__ = ["STEP2_BACKBONES", "STEP2_LOSSES", "TAKE_FROM_RPN", "Phase", "end_to_end", "four_step"]

RPN_LOSSES = ("loss_rpn_cls", "loss_rpn_box")
ROI_LOSSES = ("loss_cls", "loss_box")
STEP2_BACKBONES = ("initial", "rpn")  # four_step's step2_backbone values (the paper's first)
STEP2_LOSSES = ("roi", "all")  # four_step's step2_losses values (the paper's first)

# start actions that take parts of the step-1 ("rpn") model into the main one:
# action -> (parts copied, whether the step-1 model is released afterwards)
TAKE_FROM_RPN: dict[str, tuple[tuple[str, ...], bool]] = {
    "take_rpn_backbone": (("backbone",), False),
    "take_rpn_model": (("backbone", "rpn_head"), False),
    "take_rpn_head": (("rpn_head",), True),
    "release_rpn": ((), True),
}


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
        start (str | None): action when the phase begins: "copy_initial_to_rpn" (step 1), one
            of ``TAKE_FROM_RPN`` (steps 2 and 3), None.
    """

    name: str
    iterations: int
    train_modules: tuple[str, ...]
    losses: tuple[str, ...]
    model: str = "main"
    proposals_from: str | None = None
    start: str | None = None

    @property
    def evaluable(self) -> bool:
        """Whether the main model is a whole detector here: it trains, and its own RPN makes
        its proposals or trains with it (the joint step 2 of 4-step training)."""
        return self.model == "main" and (self.proposals_from is None
                                         or "rpn_head" in self.train_modules)


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
    fast_rcnn_finetune_iterations: int, step2_backbone: str = "initial",
    step2_losses: str = "roi",
) -> list[Phase]:
    """The paper's 4-step alternating training (see the module docstring).

    Args:
        step2_backbone (str): where step 2's backbone starts: "initial" (the paper: the initial,
            e.g. ImageNet, weights) or "rpn" (the backbone step 1 trained).
        step2_losses (str): what step 2 trains on: "roi" (the paper: backbone + ROI head on the
            ROI losses) or "all" (backbone + RPN head + ROI head on all four losses, proposals
            still from the step-1 model).
    """
    for name, value, allowed in (("step2_backbone", step2_backbone, STEP2_BACKBONES),
                                 ("step2_losses", step2_losses, STEP2_LOSSES)):
        if value not in allowed:
            raise OptionError(name, f"{name} must be one of {allowed}, got {value!r}")
    joint = step2_losses == "all"
    step2_modules = ("backbone", "rpn_head", "roi_head") if joint else ("backbone", "roi_head")
    step2_start = None if step2_backbone == "initial" else (
        "take_rpn_model" if joint else "take_rpn_backbone")
    return [
        Phase(name="rpn", iterations=int(rpn_iterations), train_modules=("backbone", "rpn_head"),
              losses=RPN_LOSSES, model="rpn", start="copy_initial_to_rpn"),
        Phase(name="fast_rcnn", iterations=int(fast_rcnn_iterations),
              train_modules=step2_modules,
              losses=RPN_LOSSES + ROI_LOSSES if joint else ROI_LOSSES, proposals_from="rpn",
              start=step2_start),
        Phase(name="rpn_finetune", iterations=int(rpn_finetune_iterations),
              train_modules=("rpn_head",), losses=RPN_LOSSES,
              start="release_rpn" if joint else "take_rpn_head"),
        Phase(name="fast_rcnn_finetune", iterations=int(fast_rcnn_finetune_iterations),
              train_modules=("roi_head",), losses=ROI_LOSSES),
    ]
