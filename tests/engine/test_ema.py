"""The exponential moving average of the weights (``train.ema_decay``, issue #29 part 3):
the update rule on hand-computed values, the decay's warm-up, BatchNorm buffers copied (not
averaged), precision and layout, the option rules, and in the trainer: skipped steps leave the
average alone, evaluation / best.pth / final.pth use the average (the raw weights scored beside
it), exact resume of the average, checkpoints without one, the 4-step rule (the average restarts
at each phase start) and DDP. Also the refusal to "resume" a run past this run's schedule
(issue #29 part 0: ``resume=true schedule.iterations=30`` on a finished 60-iteration run)."""

from __future__ import annotations

import json
import logging
import math
import socket

import pytest
import torch
from helpers import tiny_training as tiny
from helpers.run_tool import run_tool
from torch import nn

from detector.checkpoint import CheckpointError, CheckpointMismatchError, load_checkpoint
from detector.engine import distributed as dist
from detector.engine import validation
from detector.engine.best import BestRule
from detector.engine.ema import EMAOptions, ModelEMA, ema_decay_at
from detector.engine.resume_checks import FinishedRunError
from detector.errors import OptionError, UserError

CLASSES = ["square", "circle", "triangle", "ellipse"]


def _scalar_model(value: float) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def _set(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


# ------------------------------------------------------------------------------ the rule
def test_two_updates_by_hand():
    live = _scalar_model(1.0)
    ema = ModelEMA(model=live, decay=0.75, warmup=0)
    _set(live, 3.0)
    ema.update(live)  # 0.75 * 1 + 0.25 * 3
    assert ema.module.weight.item() == 1.5
    _set(live, 7.0)
    ema.update(live)  # 0.75 * 1.5 + 0.25 * 7
    assert ema.module.weight.item() == 2.875
    assert ema.updates == 2
    assert live.weight.item() == 7.0  # the live model is only read


def test_warmup_values_by_hand():
    assert ema_decay_at(1, decay=0.999, warmup=0) == 0.999
    assert ema_decay_at(10**6, decay=0.999, warmup=0) == 0.999
    assert ema_decay_at(100, decay=0.999, warmup=100) == pytest.approx(0.999 * (1 - math.exp(-1)))
    assert ema_decay_at(1, decay=0.999, warmup=100) == pytest.approx(0.00994022, abs=1e-8)
    assert ema_decay_at(2000, decay=0.9, warmup=100) == pytest.approx(0.9, abs=1e-8)
    # the first update with warm-up 1: d = 0.8 * (1 - 1/e), weight 0 -> 1
    live = _scalar_model(0.0)
    ema = ModelEMA(model=live, decay=0.8, warmup=1)
    assert ema.current_decay() == pytest.approx(0.8 * (1 - math.exp(-1)))
    _set(live, 1.0)
    ema.update(live)
    assert ema.module.weight.item() == pytest.approx(1 - 0.8 * (1 - math.exp(-1)), abs=1e-7)
    assert ema.current_decay() == pytest.approx(0.8 * (1 - math.exp(-2)))


def test_batchnorm_statistics_are_copied_not_averaged():
    live = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    ema = ModelEMA(model=live, decay=0.5, warmup=0)
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        live[0].weight.add_(2.0)
        live[1].running_mean.fill_(7.0)
        live[1].running_var.fill_(3.0)
        live[1].num_batches_tracked.fill_(5)
    ema.update(live)
    bn = ema.module[1]
    assert torch.equal(bn.running_mean, torch.full((3,), 7.0))
    assert torch.equal(bn.running_var, torch.full((3,), 3.0))
    assert int(bn.num_batches_tracked) == 5
    torch.testing.assert_close(ema.module[0].weight, start + 1.0)  # averaged: halfway
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_the_average_is_float32_and_keeps_the_memory_format(device):
    live = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).to(
        device, memory_format=torch.channels_last).to(torch.bfloat16)
    ema = ModelEMA(model=live, decay=0.5, warmup=0)
    weight = ema.module[0].weight
    assert weight.dtype == torch.float32 and weight.device.type == device
    assert weight.is_contiguous(memory_format=torch.channels_last)
    expected = 0.5 * weight.clone() + 0.5 * (live[0].weight.float() + 1.0)
    with torch.no_grad():
        live[0].weight.add_(1.0)
    ema.update(live)
    torch.testing.assert_close(ema.module[0].weight, expected, rtol=0, atol=1e-2)
    assert ema.module[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_state_dict_round_trip():
    live = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model=live, decay=0.9, warmup=5)
    for _ in range(3):
        with torch.no_grad():
            live[0].weight.add_(0.1)
        ema.update(live)
    state = ema.state_dict()
    other = ModelEMA(model=nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), decay=0.9,
                     warmup=5)
    other.load_state_dict(state)
    assert other.updates == 3 and state["decay"] == 0.9
    for a, b in zip(ema.module.state_dict().values(), other.module.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    ema.update(live)
    other.update(live)  # the same next decay (the warm-up continues where it was)
    assert torch.equal(ema.module[0].weight, other.module[0].weight)


@pytest.mark.parametrize(("options", "option"), [
    ({"decay": 0.0}, "decay"), ({"decay": 1.0}, "decay"), ({"decay": 1}, "decay"),
    ({"decay": -0.5}, "decay"), ({"decay": float("nan")}, "decay"), ({"decay": True}, "decay"),
    ({"decay": "0.9"}, "decay"), ({"decay": 0.9, "warmup": -1}, "warmup"),
    ({"decay": 0.9, "warmup": 2.5}, "warmup"),
])
def test_bad_options_are_refused_naming_the_option(options, option):
    with pytest.raises(OptionError) as caught:
        ModelEMA(model=nn.Linear(1, 1), **options)
    assert caught.value.option == option and str(caught.value).startswith(option)
    with pytest.raises(OptionError):
        EMAOptions(**options)


def test_the_config_key_is_named(tmp_path):
    from hydra import compose, initialize_config_dir

    from detector_cli.train import build_options

    config_dir = tiny.TESTS.parent / "configs"
    for value, key in (("1.0", "train.ema_decay"), ("0", "train.ema_decay"),
                       ("abc", "train.ema_decay")):
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose("train", overrides=[*tiny.CLI_OVERRIDES, f"train.ema_decay={value}",
                                              f"output_dir={tmp_path}"])
        with pytest.raises(UserError, match=f"^{key} must be a number strictly between 0 and 1"):
            build_options(cfg, torch.device("cpu"))
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=[*tiny.CLI_OVERRIDES, "train.ema_decay=0.99",
                                          "train.ema_warmup=-3", f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="^train.ema_warmup must be an integer >= 0"):
        build_options(cfg, torch.device("cpu"))
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        off = compose("train", overrides=[*tiny.CLI_OVERRIDES, f"output_dir={tmp_path}"])
        on = compose("train", overrides=[*tiny.CLI_OVERRIDES, "train.ema_decay=0.99",
                                         f"output_dir={tmp_path}"])
    assert build_options(off, torch.device("cpu")).ema is None
    assert build_options(on, torch.device("cpu")).ema == EMAOptions(decay=0.99, warmup=100)


# ------------------------------------------------------------------------------ in the trainer
def _ema(decay=0.9, warmup=0, eval_raw=True) -> EMAOptions:
    return EMAOptions(decay=decay, warmup=warmup, eval_raw=eval_raw)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_trainer_averages_after_every_step(shapes_root, tmp_path):
    """The trainer's average = the rule applied to the weights after each step (replayed)."""
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(3),
                                ema=_ema(decay=0.6))
    initial = _state(trainer.models["main"])
    after = []
    trainer.on_step = lambda iteration: after.append(_state(trainer.models["main"]))
    trainer.train()
    expected = {k: v.float() for k, v in initial.items()}
    for weights in after:
        for k, v in weights.items():
            expected[k] = 0.6 * expected[k] + 0.4 * v if v.is_floating_point() and \
                k in dict(trainer.models["main"].named_parameters()) else v
    for k, v in trainer.ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7, msg=k)
    assert trainer.ema.updates == 3


def test_skipped_steps_do_not_update_the_average(shapes_root, tmp_path):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(4),
                                on_nonfinite="skip", ema=_ema())
    criterion, calls, seen = trainer.criterion, [0], []

    def nan_at_second(outputs, targets):
        losses = criterion(outputs, targets)
        calls[0] += 1
        if calls[0] == 2:
            losses = {**losses, "loss_cls": losses["loss_cls"] * float("nan")}
        return losses

    trainer.criterion = nan_at_second
    trainer.on_step = lambda iteration: seen.append((trainer.ema.updates,
                                                     _state(trainer.ema.module)))
    summary = trainer.train()
    assert summary["skipped_steps"] == 1 and trainer.ema.updates == 3
    assert [count for count, _ in seen] == [1, 1, 2, 3]
    for key, value in seen[0][1].items():  # the skipped step changed nothing of the average
        assert torch.equal(value, seen[1][1][key]), key


def test_evaluation_best_and_the_final_model_are_the_average(shapes_root, tmp_path,
                                                             monkeypatch):
    """decay near 1 without warm-up: the average stays at the initial weights, while the raw
    weights move; the evaluations score the average (and the raw weights beside it)."""
    scored = []
    real = validation.evaluate_sharded

    def spy(model, loader, **kwargs):
        scored.append(_state(model))
        return real(model, loader, **kwargs)

    monkeypatch.setattr(validation, "evaluate_sharded", spy)
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(4), val=True,
                                eval_period=2, lr=0.05, ema=_ema(decay=1 - 1e-9),
                                best=BestRule(metric="AR100"), checkpoint_extra={"class_names": CLASSES})
    initial = _state(trainer.models["main"])
    summary = trainer.train()
    raw = _state(trainer.models["main"])
    moved = [k for k, v in raw.items() if v.is_floating_point() and "running" not in k
             and not torch.allclose(v, initial[k], atol=1e-4)]
    assert moved  # the raw weights trained
    assert len(scored) == 4  # 2 evaluations (iteration 2 and the final one) x (raw, average)
    for raw_scored, average_scored in (scored[0:2], scored[2:4]):
        for key in moved:
            torch.testing.assert_close(average_scored[key], initial[key], rtol=0, atol=1e-5)
        assert any(not torch.allclose(raw_scored[key], initial[key], atol=1e-4) for key in moved)
    assert trainer.eval_model is trainer.ema.module
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pth")
    for key in moved:
        torch.testing.assert_close(best["model"][key], initial[key], rtol=0, atol=1e-5)
    metrics = summary["metrics"]
    assert {"raw_AP", "raw_AP50"} <= metrics.keys() and "AP" in metrics
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "AP" in r]
    assert [r["iter"] for r in evaluations] == [2, 4]
    assert all("raw_AP" in r and "raw_AP50" in r for r in evaluations)


def test_eval_raw_off_scores_only_the_average(shapes_root, tmp_path, monkeypatch):
    scored = []
    real = validation.evaluate_sharded
    monkeypatch.setattr(validation, "evaluate_sharded",
                        lambda model, loader, **kw: scored.append(model) or real(model, loader,
                                                                                 **kw))
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(2), val=True,
                                ema=_ema(eval_raw=False))
    metrics = trainer.train()["metrics"]
    assert scored == [trainer.ema.module] and "raw_AP" not in metrics


@pytest.mark.parametrize(("phases", "stop_at"), [
    (tiny.end_to_end(6), 3), (tiny.four_step(2, 3, 1, 1), 4)], ids=["end_to_end", "four_step"])
def test_exact_resume_of_the_average(shapes_root, tmp_path, phases, stop_at):
    straight, resumed, summary = tiny.straight_and_resumed(
        shapes_root, tmp_path, phases, stop_at, ema=_ema(decay=0.8, warmup=2))
    saved = load_checkpoint(summary["checkpoint"])["ema"]
    assert saved["updates"] == (stop_at if len(phases) == 1 else stop_at - 2)
    assert resumed.ema.updates == straight.ema.updates
    for key, value in straight.ema.module.state_dict().items():
        torch.testing.assert_close(resumed.ema.module.state_dict()[key], value, rtol=1e-5,
                                   atol=1e-6, msg=key)
    for key, value in straight.models["main"].state_dict().items():  # the raw weights too
        torch.testing.assert_close(resumed.models["main"].state_dict()[key], value, rtol=1e-5,
                                   atol=1e-6, msg=key)


def test_losing_the_average_shows(shapes_root, tmp_path, caplog):
    """The comparison above can fail: a checkpoint without the average (written without
    train.ema_decay) resumes with a fresh one (a warning), which ends elsewhere."""
    options = {"ema": _ema(decay=0.8)}
    straight = tiny.make_trainer(shapes_root, tmp_path / "a", phases=tiny.end_to_end(4),
                                 **options)
    straight.train()
    stop = tiny.StopAfter(2)
    first = tiny.make_trainer(shapes_root, tmp_path / "b", phases=tiny.end_to_end(4),
                              stop_signal=stop, **options)
    stop.trainer = first
    state = load_checkpoint(first.train()["checkpoint"])
    del state["ema"]
    second = tiny.make_trainer(shapes_root, tmp_path / "b", phases=tiny.end_to_end(4), **options)
    with caplog.at_level(logging.WARNING, logger="detector.train"):
        second.resume(state)
    assert "holds no average of the weights" in caplog.text
    assert second.ema.updates == 0
    for key, value in second.models["main"].state_dict().items():  # restarted at the weights
        assert torch.equal(second.ema.module.state_dict()[key], value.float()
                           if value.is_floating_point() else value), key
    second.train()
    assert second.ema.updates == 2
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(
        straight.ema.module.state_dict().values(), second.ema.module.state_dict().values(),
        strict=True))


def test_four_step_restarts_the_average_at_each_phase(shapes_root, tmp_path):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.four_step(2, 2, 2, 1),
                                ema=_ema(decay=0.5))
    starts, reset = [], trainer.ema.reset

    def counting(model):
        starts.append(trainer.position.phase_index)
        reset(model)

    trainer.ema.reset = counting
    trainer.train()
    assert starts == [0, 1, 2, 3]
    assert trainer.ema.updates == 1  # the last phase's one step (the step-1 phase: none)
    # the last phase trains the ROI head only: the rest of the average is the main model's
    main = trainer.models["main"].state_dict()
    for key, value in trainer.ema.module.state_dict().items():
        if not key.startswith("roi_head."):
            assert torch.equal(value, main[key]), key
    assert any(not torch.equal(value, main[key])
               for key, value in trainer.ema.module.state_dict().items()
               if key.startswith("roi_head.") and value.is_floating_point())


# ------------------------------------------------------------------------------ resume checks
@pytest.fixture(scope="module")
def trained(shapes_root, tmp_path_factory):
    """A finished 4-iteration run with an average (checkpoints at 2 and 4)."""
    run = tmp_path_factory.mktemp("trained")
    tiny.make_trainer(shapes_root, run, phases=tiny.end_to_end(4), checkpoint_period=2,
                      checkpoint_extra={"class_names": CLASSES}, ema=_ema()).train()
    return run


def _files(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize(("edit", "kind", "message"), [
    (lambda s: s["ema"]["weights"].update({"rpn_head.conv.weight": torch.zeros(1, 1)}),
     CheckpointMismatchError, r"ema\.weights\.rpn_head\.conv\.weight is a torch\.float32 tensor "
                              r"of shape \[1, 1\], this model's is"),
    (lambda s: s["ema"]["weights"].pop("rpn_head.conv.weight"), CheckpointMismatchError,
     r"ema\.weights does not fit this model \(1 of its weights missing"),
    (lambda s: s["ema"]["weights"]["rpn_head.conv.weight"].fill_(float("nan")), CheckpointError,
     r"ema\.weights\.rpn_head\.conv\.weight holds NaN"),
    (lambda s: s["ema"].update(updates=3), CheckpointError,
     r"ema\.updates is 3, not an integer in \[0, 2\]"),
    (lambda s: s["ema"].update(decay=1.5), CheckpointError, r"ema\.decay is 1\.5"),
    (lambda s: s.update(ema=[1]), CheckpointError, r"ema is a list, not a dict"),
], ids=["shape", "missing", "nan", "updates", "decay", "not_a_dict"])
def test_a_bad_average_is_refused_before_anything_changes(trained, shapes_root, tmp_path, edit,
                                                          kind, message):
    state = load_checkpoint(trained / "checkpoints" / "iter_0000002.pth")
    edit(state)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    trainer = tiny.make_trainer(shapes_root, tmp_path / "run", phases=tiny.end_to_end(4),
                                checkpoint_extra={"class_names": CLASSES}, ema=_ema())
    average = _state(trainer.ema.module)
    with pytest.raises(kind, match=message) as caught:
        trainer.resume(path)
    assert str(caught.value).startswith(f"checkpoint {path}: ")
    assert trainer.position.iteration == 0 and trainer.ema.updates == 0
    for key, value in trainer.ema.module.state_dict().items():
        assert torch.equal(value, average[key]), key


@pytest.mark.parametrize(("phases", "message"), [
    (tiny.end_to_end(2), r"is of a finished run \(4 iterations done\), but this run's schedule "
                         r"has 2 iterations in all: ask for at least as many "
                         r"\(schedule\.iterations"),
    (tiny.end_to_end(3), r"is of a finished run \(4 iterations done\), but this run's "
                         r"schedule has 3 iterations in all"),
], ids=["half", "one_less"])
def test_a_run_past_the_schedule_is_refused_and_its_folder_untouched(trained, shapes_root,
                                                                     tmp_path, phases, message):
    before = _files(trained)
    trainer = tiny.make_trainer(shapes_root, trained, phases=phases,
                                checkpoint_extra={"class_names": CLASSES})
    with pytest.raises(FinishedRunError, match=message) as caught:
        trainer.resume(trained / "checkpoints" / "iter_0000004.pth")
    assert "\n" not in str(caught.value) and isinstance(caught.value, UserError)
    assert _files(trained) == before and trainer.position.iteration == 0


def test_a_stopped_run_past_the_shorter_schedule_is_refused(trained, shapes_root, tmp_path):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(1))
    with pytest.raises(FinishedRunError, match=r"has 2 iterations done, but this run's schedule "
                                               r"has 1 iterations in all"):
        trainer.resume(trained / "checkpoints" / "iter_0000002.pth")
    # the same length or longer still resumes
    for length in (4, 6):
        trainer = tiny.make_trainer(shapes_root, tmp_path / str(length),
                                    phases=tiny.end_to_end(length))
        trainer.resume(trained / "checkpoints" / "iter_0000004.pth")
        assert trainer.position.iteration == 4


def test_a_phase_shorter_than_its_steps_done_is_refused(shapes_root, tmp_path):
    stop = tiny.StopAfter(3)  # inside step 2 (fast_rcnn), 2 of its steps done
    first = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.four_step(1, 3, 1, 1),
                              stop_signal=stop)
    stop.trainer = first
    path = first.train()["checkpoint"]
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.four_step(1, 1, 3, 3))
    with pytest.raises(FinishedRunError, match=r"has 2 steps of phase fast_rcnn done, but this "
                                               r"run's fast_rcnn has 1: ask for at least"):
        trainer.resume(path)
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.four_step(1, 2, 1, 1))
    trainer.resume(path)  # as many as done: resumes (the phase ends at once)
    assert trainer.position.phase_iter == 2


# ------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_averages_the_unwrapped_module_like_a_plain_run(shapes_root, tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    plain = tiny.make_trainer(shapes_root, tmp_path / "plain", phases=tiny.end_to_end(3),
                              ema=_ema(decay=0.7))
    plain.train()
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    dist.init_distributed(torch.device("cpu"))
    try:
        ddp = tiny.make_trainer(shapes_root, tmp_path / "ddp", phases=tiny.end_to_end(3),
                                ema=_ema(decay=0.7))
        ddp.train()
    finally:
        dist.cleanup_distributed()
    assert ddp.ema.updates == plain.ema.updates == 3
    for key, value in plain.ema.module.state_dict().items():
        torch.testing.assert_close(ddp.ema.module.state_dict()[key], value, msg=key)


# ------------------------------------------------------------------------------ the tool
@pytest.mark.slow
def test_a_tool_run_saves_the_average_as_final_and_reports_raw_metrics(tmp_path):
    run = tmp_path / "run"
    args = [*tiny.CLI_OVERRIDES, f"dataset.root={tmp_path / 's'}", "schedule.iterations=2",
            "train.ema_decay=0.5", "train.ema_warmup=0", "train.checkpoint_period=2",
            f"output_dir={run}"]
    done = run_tool("train_net.py", args, cwd=tmp_path, env={"PYTHONPATH": str(tiny.TESTS)})
    assert done.returncode == 0, done.stderr[-3000:]
    final = load_checkpoint(run / "checkpoints" / "final.pth")
    state = load_checkpoint(run / "checkpoints" / "iter_0000002.pth")
    assert state["ema"]["updates"] == 2
    for key, value in state["ema"]["weights"].items():
        assert torch.equal(final["model"][key], value), key
    assert any(not torch.equal(state["model"][k], v) for k, v in final["model"].items())
    metrics = json.loads((run / "final_metrics.json").read_text())
    assert {"AP", "raw_AP", "raw_AP50"} <= metrics.keys()
    # resuming the finished run with a shorter schedule: one line, exit 2, final.pth kept
    before = {p: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    again = run_tool("train_net.py", [*args[:-1], "schedule.iterations=1", "resume=true",
                                      f"output_dir={run}"],
                     cwd=tmp_path, env={"PYTHONPATH": str(tiny.TESTS)})
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "finished run (2 iterations done)" in again.stderr
    assert "schedule has 1 iterations in all" in again.stderr
    assert {p: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
