"""Training schedules as data: the phases of end-to-end and 4-step training."""

from __future__ import annotations

import dataclasses

import pytest

from detector.engine.schedules import Phase, end_to_end, four_step
from detector.modeling import LOSS_NAMES

RPN = ("loss_rpn_cls", "loss_rpn_box")
ROI = ("loss_cls", "loss_box")


def test_end_to_end_is_one_phase_training_everything_on_all_losses():
    (phase,) = end_to_end(iterations=7)
    assert phase.name == "end_to_end"
    assert phase.iterations == 7
    assert set(phase.train_modules) == {"backbone", "rpn_head", "roi_head"}
    assert sorted(phase.losses) == sorted(LOSS_NAMES)
    assert (phase.model, phase.proposals_from, phase.start) == ("main", None, None)


def test_four_step_phases_follow_the_paper():
    phases = four_step(rpn_iterations=1, fast_rcnn_iterations=2, rpn_finetune_iterations=3,
                       fast_rcnn_finetune_iterations=4)
    table = [(p.name, p.iterations, p.train_modules, p.losses, p.model, p.proposals_from, p.start)
             for p in phases]
    assert table == [
        ("rpn", 1, ("backbone", "rpn_head"), RPN, "rpn", None, "copy_initial_to_rpn"),
        ("fast_rcnn", 2, ("backbone", "roi_head"), ROI, "main", "rpn", None),
        ("rpn_finetune", 3, ("rpn_head",), RPN, "main", None, "take_rpn_head"),
        ("fast_rcnn_finetune", 4, ("roi_head",), ROI, "main", None, None),
    ]


def test_joint_step2_trains_the_rpn_on_step1_proposals_and_step3_keeps_its_head():
    phases = four_step(rpn_iterations=1, fast_rcnn_iterations=2, rpn_finetune_iterations=3,
                       fast_rcnn_finetune_iterations=4, step2_backbone="rpn", step2_losses="all")
    step2, step3 = phases[1], phases[2]
    assert step2.train_modules == ("backbone", "rpn_head", "roi_head")
    assert step2.losses == RPN + ROI
    assert (step2.proposals_from, step2.start) == ("rpn", "take_rpn_model")
    assert (step3.train_modules, step3.start) == (("rpn_head",), "release_rpn")
    # from the initial backbone, step 2 keeps the main model's own (initial) RPN head
    assert four_step(rpn_iterations=1, fast_rcnn_iterations=1, rpn_finetune_iterations=1,
                     fast_rcnn_finetune_iterations=1, step2_losses="all")[1].start is None


def test_a_phase_is_evaluable_where_the_main_model_is_a_whole_detector():
    def evaluable(**options):
        return [p.evaluable for p in four_step(rpn_iterations=1, fast_rcnn_iterations=1,
                                               rpn_finetune_iterations=1,
                                               fast_rcnn_finetune_iterations=1, **options)]

    assert end_to_end(iterations=1)[0].evaluable
    # step 1 trains the copy; the paper's step 2 has no RPN of its own that it trains
    assert evaluable() == [False, False, True, True]
    assert evaluable(step2_backbone="rpn", step2_losses="all") == [False, True, True, True]


def test_every_phase_names_losses_the_criterion_returns():
    phases = end_to_end(iterations=1) + four_step(
        rpn_iterations=1, fast_rcnn_iterations=1, rpn_finetune_iterations=1,
        fast_rcnn_finetune_iterations=1)
    for phase in phases:
        assert set(phase.losses) <= set(LOSS_NAMES), phase.name


def test_iterations_are_coerced_to_int():
    # configs may hand over numbers as strings or floats (e.g. from the command line)
    phases = four_step(rpn_iterations="5", fast_rcnn_iterations=6.0, rpn_finetune_iterations=7,
                       fast_rcnn_finetune_iterations=8)
    assert [p.iterations for p in phases] == [5, 6, 7, 8]
    assert all(type(p.iterations) is int for p in phases)


def test_phase_is_immutable():
    (phase,) = end_to_end(iterations=1)
    assert isinstance(phase, Phase)
    with pytest.raises(dataclasses.FrozenInstanceError):
        phase.iterations = 2


@pytest.mark.parametrize(("key", "value"), [("step2_backbone", "imagenet"), ("step2_losses", "rpn")])
def test_four_step_rejects_unknown_step2_options(key, value):
    with pytest.raises(ValueError, match=f"{key} must be one of .* got '{value}'"):
        four_step(rpn_iterations=1, fast_rcnn_iterations=1, rpn_finetune_iterations=1,
                  fast_rcnn_finetune_iterations=1, **{key: value})
