"""Where the 4-step schedule's step 2 starts its backbone: the paper's initial weights (default)
or the backbone step 1 trained (``step2_backbone="rpn"``, for random initialisation); and step 2
training the RPN too (``step2_losses="all"``)."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_training import make_trainer

from detector.engine import schedules


def _backbone(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


def _heads(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.rpn_head.state_dict().items()}


def _run_recording_step2_start(shapes_root, tmp_path, step2_backbone: str):
    """Train 2 + 2 + 1 + 1 iterations; return (initial backbone, step-1 backbone as step 2
    begins, main backbone as step 2 begins, step-1 backbone after step 2)."""
    phases = schedules.four_step(rpn_iterations=2, fast_rcnn_iterations=2,
                                 rpn_finetune_iterations=1, fast_rcnn_finetune_iterations=1,
                                 step2_backbone=step2_backbone)
    trainer = make_trainer(shapes_root, tmp_path, phases=phases)
    initial = _backbone(trainer.models["main"])
    seen: dict[str, dict] = {}
    begin = trainer._begin

    def recording_begin(phase):
        if phase.name == "rpn_finetune":  # the step-1 model is released here
            seen["rpn_after_step2"] = _backbone(trainer.models["rpn"])
        begin(phase)
        if phase.name == "fast_rcnn":
            seen["rpn"], seen["main"] = (_backbone(trainer.models[k]) for k in ("rpn", "main"))

    trainer._begin = recording_begin
    trainer.train()
    return initial, seen["rpn"], seen["main"], seen["rpn_after_step2"]


def _equal(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys() and a
    return all(torch.equal(a[k], b[k]) for k in a)


def test_default_step2_restarts_from_the_initial_backbone(shapes_root, tmp_path):
    initial, step1, main, _ = _run_recording_step2_start(shapes_root, tmp_path, "initial")
    assert not _equal(step1, initial)  # step 1 did train its backbone
    assert _equal(main, initial)


def test_rpn_option_starts_step2_from_step1_backbone(shapes_root, tmp_path):
    initial, step1, main, step1_later = _run_recording_step2_start(shapes_root, tmp_path, "rpn")
    assert not _equal(step1, initial)
    assert _equal(main, step1)  # weights and BN statistics
    # a copy: step 2 trains the main backbone, the step-1 model (proposals) keeps its own
    assert _equal(step1_later, step1)


def test_unknown_step2_backbone_is_rejected():
    with pytest.raises(ValueError, match="step2_backbone"):
        schedules.four_step(rpn_iterations=1, fast_rcnn_iterations=1, rpn_finetune_iterations=1,
                            fast_rcnn_finetune_iterations=1, step2_backbone="imagenet")


def test_joint_step2_trains_the_rpn_and_step3_keeps_it(shapes_root, tmp_path):
    phases = schedules.four_step(rpn_iterations=2, fast_rcnn_iterations=2,
                                 rpn_finetune_iterations=1, fast_rcnn_finetune_iterations=1,
                                 step2_backbone="rpn", step2_losses="all")
    trainer = make_trainer(shapes_root, tmp_path, phases=phases)
    initial_head = _heads(trainer.models["main"])
    seen: dict[str, dict] = {}
    begin = trainer._begin

    def recording_begin(phase):
        if phase.name == "rpn_finetune":
            seen["main_after_step2"] = _heads(trainer.models["main"])
            seen["step1_head"] = _heads(trainer.models["rpn"])
        begin(phase)
        if phase.name == "fast_rcnn":
            seen["main_start"] = {**_heads(trainer.models["main"]),
                                  **_backbone(trainer.models["main"])}
            seen["step1"] = {**_heads(trainer.models["rpn"]), **_backbone(trainer.models["rpn"])}
        if phase.name == "rpn_finetune":
            seen["main_step3"] = _heads(trainer.models["main"])
            seen["released"] = trainer.models["rpn"] is None

    trainer._begin = recording_begin
    trainer.train()
    assert _equal(seen["main_start"], seen["step1"])  # backbone and RPN head from step 1
    assert not _equal(seen["main_after_step2"], seen["step1_head"])  # step 2 trained the head
    assert not _equal(seen["main_after_step2"], initial_head)
    assert _equal(seen["main_step3"], seen["main_after_step2"])  # step 3 keeps its own head
    assert seen["released"]


def test_unknown_step2_losses_are_rejected():
    with pytest.raises(ValueError, match="step2_losses"):
        schedules.four_step(rpn_iterations=1, fast_rcnn_iterations=1, rpn_finetune_iterations=1,
                            fast_rcnn_finetune_iterations=1, step2_losses="rpn")


@pytest.mark.parametrize(("stop_at", "step2_losses"), [(2, "roi"), (3, "roi"), (3, "all")],
                         ids=["end_of_step1", "inside_step2", "inside_joint_step2"])
def test_resume_keeps_step1_backbone_start(shapes_root, tmp_path, stop_at, step2_losses):
    """Stopped at the end of step 1 (the copy is still to come) or inside step 2 (it happened),
    a resumed run ends with the weights of an uninterrupted one."""
    from helpers import tiny_training

    phases = schedules.four_step(rpn_iterations=2, fast_rcnn_iterations=2,
                                 rpn_finetune_iterations=1, fast_rcnn_finetune_iterations=1,
                                 step2_backbone="rpn", step2_losses=step2_losses)
    straight = make_trainer(shapes_root, tmp_path / "straight", phases=phases)
    straight.train()
    stop = tiny_training.StopAfter(stop_at)
    first = make_trainer(shapes_root, tmp_path / "run", phases=phases, stop_signal=stop)
    stop.trainer = first
    checkpoint = first.train()["checkpoint"]
    second = make_trainer(shapes_root, tmp_path / "run", phases=phases)
    torch.manual_seed(1234)  # as in a fresh process: other weights; everything comes from the file
    second.models["main"].load_state_dict(tiny_training.tiny_model().state_dict())
    second.resume(checkpoint)
    second.train()
    a, b = (t.models["main"].state_dict() for t in (straight, second))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
