"""What a training checkpoint must hold to be resumed: every value checked before anything is
restored or any file touched.

A checkpoint (``Checkpointer.state_dict``) is plain data from a file that may come from anywhere
(a shared run folder, a download). ``check_resume_state`` checks all of it first: the schedule and
the classes (in this run's order: the same classes in another order would silently mean other
labels), each number of the position in its range (``iteration`` in [``phase_iter``, the
schedule's iterations], ``phase_iter`` within its phase, the data stream's ``epoch`` and
``position`` within the iterations done), the random generators exactly as
``capture_rng_state`` writes them, the weights with this model's keys, shapes and dtypes (and
finite), the weight average (``ema``: weights like the model's, its update count within the
iterations done), and the last evaluation, the divergence reference and the best evaluation so far
(``best``) as plain numbers; and that the schedule still has steps to do
(``FinishedRunError``: a run that did more iterations than this run's schedule asks for is
never "resumed" into rewriting its final files). A value outside is
one line naming its key: ``CheckpointError`` (malformed), ``CheckpointMismatchError`` (another
run's: other classes, another schedule or model). The optimiser's state is checked against the
phase's optimiser by ``detector.engine.optim.check_optimization``.
"""

from __future__ import annotations

import logging

import torch

from detector.checkpoint import CheckpointError, CheckpointMismatchError
from detector.engine.checked_values import Where, is_number, plain_data, short_names, show
from detector.engine.schedules import TAKE_FROM_RPN, Phase

__all__ = ["MAX_PHASE_ITERATIONS", "FinishedRunError", "check_resume_state"]


class FinishedRunError(CheckpointMismatchError):
    """The checkpoint has more iterations done than this run's schedule asks for (e.g. a
    finished 60-iteration run resumed with ``schedule.iterations=30``)."""

log = logging.getLogger("detector.train")

MAX_PHASE_ITERATIONS = 10**9  # no phase of a real schedule is longer
MAX_RANKS = 4096  # random states of this many processes at most
MT_WORDS = 624  # the Mersenne Twister's state words (NumPy's and Python's generators)


def check_resume_state(state, *, source: str, phases: list[Phase], class_names: list | None,
                       model: torch.nn.Module, ema: torch.nn.Module | None = None) -> dict:
    """Check a loaded training checkpoint before anything of it is restored.

    Args:
        state: what ``load_checkpoint`` returned.
        source (str): "checkpoint PATH" (or "the checkpoint"), the start of every message.
        phases: this run's schedule. class_names: this run's classes (None: not checked).
        model: this run's main model (the "rpn" model is a copy of it).
        ema: this run's weight average (``ModelEMA.module``), or None (none: ``ema`` is not
            read, not checked).

    Returns:
        dict: the position (``TrainingPosition.state_dict()``), checked.
    """
    where = Where(source)
    if not isinstance(state, dict) or "trainer" not in state:
        raise _not_resumable(state, source)
    trainer = where.mapping(state["trainer"], "trainer")
    lengths = _check_schedule(trainer, where, phases)
    _check_classes(state, where, class_names)
    position = _check_position(state, trainer, where, lengths, phases)
    iteration = position["iteration"]
    _check_not_past_the_schedule(position, where, lengths, phases)
    if lengths != [p.iterations for p in phases]:  # (once the position fits this schedule)
        log.warning("resuming with different phase lengths (%s, checkpoint %s): the LR "
                    "schedule differs from the interrupted run's",
                    [p.iterations for p in phases], lengths)
    _check_evaluation(trainer, where, iteration)
    _check_divergence(trainer.get("divergence"), where)
    _check_best(state.get("best"), where, iteration)
    data = where.mapping(state.get("data"), "data")
    where.integer(data.get("epoch"), "data.epoch", 0, iteration)
    where.integer(data.get("position"), "data.position", 0, iteration)
    if data.get("seed") is not None:
        where.integer(data["seed"], "data.seed", -2**63, 2**64 - 1)
    _check_rng(state.get("rng"), where)
    reference = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    check_weights(state.get("model"), where, "model", reference)
    if state.get("rpn_model") is not None:
        check_weights(state["rpn_model"], where, "rpn_model", reference)
    elif _needs_rpn(phases, position["phase_index"], position["phase_begun"]):
        raise where.error("rpn_model", "is missing, but the schedule still needs the step-1 model")
    if ema is not None and state.get("ema") is not None:
        _check_average(state["ema"], where, iteration, ema)
    return position


def _check_not_past_the_schedule(position: dict, where: Where, lengths: list[int],
                                 phases: list[Phase]) -> None:
    """Refuse a checkpoint further on than this run's schedule goes: more iterations done than
    it has in all, or more steps of the current phase than this run's phase has (resuming would
    only rewrite the run's final files, e.g. "resumed at iteration 60/30")."""
    done, total = position["iteration"], sum(p.iterations for p in phases)
    index, phase_iter = position["phase_index"], position["phase_iter"]
    finished = done == sum(lengths)  # every step of the checkpoint's schedule done
    what = (f"is of a finished run ({done} iterations done)" if finished
            else f"has {done} iterations done")
    hint = ("ask for at least as many (schedule.iterations, or the phase lengths of a 4-step "
            "schedule) to continue it, or start a new run in another output_dir")
    if done > total:
        raise FinishedRunError(f"{where.source} {what}, but this run's schedule has {total} "
                               f"iterations in all: {hint}")
    if not finished and index < len(phases) and phase_iter > phases[index].iterations:
        raise FinishedRunError(
            f"{where.source} has {phase_iter} steps of phase {phases[index].name} done, but "
            f"this run's {phases[index].name} has {phases[index].iterations}: {hint}")


def _check_average(state, where: Where, iteration: int, ema: torch.nn.Module) -> None:
    """``ema`` (``detector.engine.ema.ModelEMA.state_dict``): weights that fit this run's
    average, an update count within the iterations done, a decay in (0, 1)."""
    state = where.mapping(state, "ema")
    where.integer(state.get("updates"), "ema.updates", 0, iteration)
    decay = state.get("decay")
    if decay is not None and not (is_number(decay) and 0 < decay < 1):
        raise where.error("ema.decay", f"is {show(decay)}, not a number in (0, 1)")
    reference = {k: (v.shape, v.dtype) for k, v in ema.state_dict().items()}
    check_weights(state.get("weights"), where, "ema.weights", reference)


def _not_resumable(state, source: str) -> CheckpointError:
    if isinstance(state, dict) and "model" in state:
        return CheckpointError(
            f"{source} is a final checkpoint: the trained model without the training state "
            f"(no 'trainer' key), so training cannot continue from it; resume from an "
            f"iter_*.pth of its run (resume=PATH, or resume=true with output_dir=<its run>)")
    return CheckpointError(f"{source} is not a training checkpoint (no 'trainer' key)")


def _check_schedule(trainer: dict, where: Where, phases: list[Phase]) -> list[int]:
    """The checkpoint's phase lengths; its phase names must be this run's."""
    saved = where.sequence(trainer.get("phases"), "trainer.phases", most=64)
    if not all(isinstance(name, str) and len(name) <= 100 for name in saved):
        raise where.error("trainer.phases", "is not a list of phase names")
    names = [p.name for p in phases]
    if saved != names:
        raise CheckpointMismatchError(f"{where.source} is of a run with phases {short_names(saved)}, "
                                      f"this run has {names}: resume with the same schedule")
    lengths = where.sequence(trainer.get("phase_iterations"), "trainer.phase_iterations",
                             len(names))
    for i, length in enumerate(lengths):
        where.integer(length, f"trainer.phase_iterations[{i}]", 1, MAX_PHASE_ITERATIONS)
    return lengths


def _check_classes(state: dict, where: Where, ours: list | None) -> None:
    """The checkpoint's classes must be this run's, in the same order (label i = class i)."""
    if ours is None:
        return
    saved = state.get("class_names")
    if not isinstance(saved, list | tuple) or len(saved) > 100_000 or not all(
            isinstance(name, str) for name in saved):
        raise where.error("class_names", f"is {show(saved)}, not a list of class names")
    saved, ours = list(saved), list(ours)
    if saved == ours:
        return
    if sorted(saved) == sorted(ours):
        raise CheckpointMismatchError(
            f"{where.source} is for the same classes in another order ({short_names(saved)}; this "
            f"run's dataset: {short_names(ours)}): its label numbers would name other classes; "
            f"resume with the class order it was trained with")
    raise CheckpointMismatchError(f"{where.source} is for the classes {short_names(saved)}, this "
                                  f"run's dataset has {short_names(ours)}: resume it with its own "
                                  f"dataset")


def _check_position(state: dict, trainer: dict, where: Where, lengths: list[int],
                    phases: list[Phase]) -> dict:
    index = where.integer(trainer.get("phase_index"), "trainer.phase_index", 0, len(lengths))
    phase_iter = where.integer(trainer.get("phase_iter"), "trainer.phase_iter", 0,
                               lengths[index] if index < len(lengths) else 0)
    total = max(sum(lengths), sum(p.iterations for p in phases))
    iteration = where.integer(state.get("iteration"), "iteration", phase_iter, total)
    begun = trainer.get("phase_begun")
    if not isinstance(begun, bool) or (phase_iter > 0 and not begun):
        raise where.error("trainer.phase_begun", f"is {show(begun)}, not true or false (true "
                                                 f"once a step of the phase ran)")
    skipped = where.integer(trainer.get("skipped_steps"), "trainer.skipped_steps", 0, iteration)
    return {"iteration": iteration, "phase_index": index, "phase_iter": phase_iter,
            "phase_begun": begun, "skipped_steps": skipped}


def _check_evaluation(trainer: dict, where: Where, iteration: int) -> None:
    metrics = trainer.get("last_metrics")
    if metrics is not None and not (isinstance(metrics, dict)
                                    and plain_data(metrics, strings=False)):
        raise where.error("trainer.last_metrics", f"is {show(metrics)}, not a dict of metrics "
                                                  f"(names to numbers)")
    if trainer.get("last_eval_iteration") is not None:
        where.integer(trainer["last_eval_iteration"], "trainer.last_eval_iteration", 0,
                      iteration)


def _check_divergence(state, where: Where) -> None:
    if state is None:
        return  # older checkpoints: none
    where.mapping(state, "trainer.divergence")
    if state.get("reference") is not None:
        where.number(state["reference"], "trainer.divergence.reference")
    where.integer(state.get("strikes", 0), "trainer.divergence.strikes", 0, 10**6)


def _check_best(state, where: Where, iteration: int) -> None:
    """``best`` (``detector.engine.best.BestTracker.state_dict``): absent in older checkpoints."""
    if state is None:
        return
    where.mapping(state, "best")
    metric = state.get("metric")
    if metric is not None and not (isinstance(metric, str) and 0 < len(metric) <= 200):
        raise where.error("best.metric", f"is {show(metric)}, not a metric name")
    if state.get("mode") not in ("max", "min"):
        raise where.error("best.mode", f"is {show(state.get('mode'))}, not 'max' or 'min'")
    if state.get("value") is not None:
        where.number(state["value"], "best.value")
    if state.get("iteration") is not None:
        where.integer(state["iteration"], "best.iteration", 0, iteration)
    if (state.get("value") is None) != (state.get("iteration") is None):
        raise where.error("best", "has a value without its iteration (or the other way round)")
    where.integer(state.get("bad_evaluations"), "best.bad_evaluations", 0, MAX_PHASE_ITERATIONS)


def _check_rng(rngs, where: Where) -> None:
    """One state per process, each exactly what ``capture_rng_state`` writes."""
    rngs = where.sequence(rngs, "rng", most=MAX_RANKS)
    if not rngs:
        raise where.error("rng", "is empty, not one random state per process")
    torch_bytes = torch.get_rng_state().numel()
    for rank, rng in enumerate(rngs):
        key = f"rng[{rank}]"
        rng = where.mapping(rng, key)
        _byte_state(rng.get("torch"), where, f"{key}.torch", torch_bytes)
        cuda = where.sequence(rng.get("cuda", []), f"{key}.cuda", most=1024)
        used = torch.cuda.is_available() and len(cuda) == torch.cuda.device_count()
        for i, value in enumerate(cuda):
            length = torch.cuda.get_rng_state(i).numel() if used else None
            _byte_state(value, where, f"{key}.cuda[{i}]", length)
        _check_numpy_state(rng.get("numpy"), where, f"{key}.numpy")
        _check_python_state(rng.get("python"), where, f"{key}.python")


def _byte_state(value, where: Where, key: str, length: int | None) -> None:
    good = (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1
            and value.layout == torch.strided
            and (value.numel() == length if length is not None else value.numel() <= 4096))
    if not good:
        size = f"{length} bytes" if length is not None else "bytes"
        raise where.error(key, f"is {show(value)}, not a torch.uint8 tensor of {size} (a "
                               f"generator state)")


def _check_numpy_state(state, where: Where, key: str) -> None:
    state = where.mapping(state, key)
    if state.get("name") != "MT19937":
        raise where.error(f"{key}.name", f"is {show(state.get('name'))}, not 'MT19937'")
    keys = state.get("keys")
    if not (isinstance(keys, torch.Tensor) and keys.dtype == torch.int64 and keys.dim() == 1
            and keys.numel() == MT_WORDS and keys.layout == torch.strided
            and int(keys.min()) >= 0 and int(keys.max()) < 2**32):
        raise where.error(f"{key}.keys", f"is {show(keys)}, not {MT_WORDS} int64 words in "
                                         f"[0, 2**32)")
    where.integer(state.get("pos"), f"{key}.pos", 0, MT_WORDS)
    where.integer(state.get("has_gauss"), f"{key}.has_gauss", 0, 1)
    where.number(state.get("cached"), f"{key}.cached")


def _check_python_state(state, where: Where, key: str) -> None:
    version, internal, gauss = where.sequence(state, key, 3)
    where.integer(version, f"{key}[0]", 3, 3)  # random.getstate()'s format version
    internal = where.sequence(internal, f"{key}[1]", MT_WORDS + 1)
    if not all(isinstance(word, int) and not isinstance(word, bool) and 0 <= word < 2**32
               for word in internal[:MT_WORDS]):
        raise where.error(f"{key}[1]", f"is not {MT_WORDS} words in [0, 2**32) and an index")
    where.integer(internal[MT_WORDS], f"{key}[1][{MT_WORDS}]", 0, MT_WORDS)
    if gauss is not None:
        where.number(gauss, f"{key}[2]")


def check_weights(weights, where: Where, key: str, reference: dict) -> None:
    """``weights`` must be a state dict with ``reference``'s keys and, for each, a tensor of its
    (shape, dtype), finite where floating-point."""
    weights = where.mapping(weights, key)
    missing = [k for k in reference if k not in weights]
    extra = [k for k in weights if k not in reference]
    if missing or extra:
        raise where.error(key, f"does not fit this model ({len(missing)} of its weights missing"
                               f"{', e.g. ' + show(missing[0]) if missing else ''}; "
                               f"{len(extra)} unknown{', e.g. ' + show(extra[0]) if extra else ''}"
                               f"): resume with the model it was trained with",
                          CheckpointMismatchError)
    for name, (shape, dtype) in reference.items():
        value = weights[name]
        if not (isinstance(value, torch.Tensor) and value.shape == shape and value.dtype == dtype
                and value.layout == torch.strided):
            raise where.error(f"{key}.{name}", f"is {show(value)}, this model's is a {dtype} "
                                               f"tensor of shape {list(shape)}",
                              CheckpointMismatchError)
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise where.error(f"{key}.{name}", "holds NaN or infinite values")


def _needs_rpn(phases: list[Phase], index: int, begun: bool) -> bool:
    """Whether the step-1 ("rpn") model is used from phase ``index`` on before a phase start
    makes it afresh."""
    for j in range(index, len(phases)):
        phase = phases[j]
        if not (j == index and begun):
            if phase.start == "copy_initial_to_rpn":
                return False
            if phase.start in TAKE_FROM_RPN:
                return True
        if "rpn" in (phase.model, phase.proposals_from):
            return True
    return False
