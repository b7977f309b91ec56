"""Start-up errors that are the user's, as one line on stderr and exit code 2, for every tool.

A bad config value, a missing or bad dataset, a missing or unreadable checkpoint, a checkpoint
for other classes: the user needs the one sentence that says what is wrong, not Hydra's "Error
executing job with overrides", "Error in call to target ..." and "set HYDRA_FULL_ERROR" lines
around it. ``HYDRA_FULL_ERROR=1`` keeps the full trace, for debugging.

The API (``from detector_cli import cli``; a tool is a shim around it)::

    @hydra.main(config_path="../configs", config_name="train", version_base="1.3")
    def main(cfg):
        with cli.exit_on_user_error():   # inside the task function, so Hydra never sees it
            run(cfg)

    if __name__ == "__main__":
        cli.check_command_line("train")  # a typo'd key or group option: one line, exit 2
        main()

A tool whose library raises errors of its own kind passes them along:
``cli.exit_on_user_error(SomeError)`` (the library's own derive from
``detector.errors.UserError`` and need no naming). ``user_error(error)`` finds the user's error
inside another (``hydra.utils.instantiate`` wraps what a constructor raised in an
``InstantiationException``); ``report_user_error(error)`` prints it and returns 2, for code that
catches the errors itself. ``USER_ERRORS`` are the types every tool treats so.
``resolve_checkpoint(cfg)`` is the tools' shared ``checkpoint=`` rule: the given path, the
``final.pth`` of the newest finished, evaluated run under ``outputs/`` (``choose_checkpoint``;
the newest ``final.pth`` when there is none; which one and why is logged), or
(``checkpoint=best``) the ``best.pth`` beside it. ``config_keys(section)`` names the config key of a
library constructor's ``OptionError`` ("on_nonfinite must ..." -> "train.on_nonfinite must ...").

Paths as typed: a sweep job's folder is named by its overrides
(``outputs/multirun/<date>/experiment=focal,optimizer.lr=0.001/``), and Hydra's override grammar
reads ``=`` and ``,`` in a value as syntax. ``check_command_line`` therefore rewrites, in
``sys.argv``, each path-valued ``key=value`` (``is_path_key``: checkpoint, input, output, ...,
``*_dir``, ``*_file``, ``dataset.root``) whose value Hydra would not read back as exactly that
string into a quoted Hydra string (``hydra_quote``); ``null``, ``true``/``false``, interpolations
and values the user quoted for Hydra already are left alone. ``command_arg(key, value)`` is the
shell-quoted ``key=value`` a tool prints in a command for the user to paste.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from detector import run_files
from detector.errors import OptionError, UserError
from detector.study.run_checks import check_final
from detector.untrusted import RunFileError, finite_number
from detector_cli.checks import ConfigError, check_overrides

__all__ = ["USER_ERRORS", "check_command_line", "choose_checkpoint", "command_arg", "config_keys",
           "counted", "exit_on_user_error", "hydra_quote", "is_path_key", "quote_path_overrides",
           "report_user_error", "resolve_checkpoint", "user_error"]

# every error the library raises for the user to fix derives from UserError (ConfigError too)
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)
EXIT_USER_ERROR = 2
PATH_KEYS = ("checkpoint", "checkpoint_b", "input", "output", "output_dir", "outputs_root", "onnx",
             "resume", "root", "dir")
PATH_SUFFIXES = ("_dir", "_file", "_root", "_path")


def full_error() -> bool:
    """Whether HYDRA_FULL_ERROR=1 asks for full traces."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def user_error(error: BaseException, extra: tuple[type[BaseException], ...] = ()
               ) -> BaseException | None:
    """``error`` or the first exception it was raised from (``__cause__``, then
    ``__context__``, recursively) that is one of ``USER_ERRORS`` or ``extra``; None if none."""
    kinds = USER_ERRORS + tuple(extra)
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kinds):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _line(error: BaseException) -> str:
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


def report_user_error(error: BaseException) -> int:
    """Print ``error: <message>`` (one line) on stderr, record it in the run's log files, and
    return the exit code 2; under HYDRA_FULL_ERROR=1, raise ``error`` again instead."""
    if full_error():
        raise error
    line = f"error: {_line(error)}"
    print(line, file=sys.stderr, flush=True)
    record = logging.LogRecord("cli", logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:  # e.g. Hydra's <tool>.log; not the console
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    return EXIT_USER_ERROR


@contextlib.contextmanager
def exit_on_user_error(*extra: type[BaseException]) -> Iterator[None]:
    """Turn a user error raised inside the block (even wrapped, see ``user_error``; ``extra``
    adds the tool's own error types) into one line on stderr and ``SystemExit(2)``; every other
    exception passes unchanged."""
    try:
        yield
    except Exception as error:
        found = user_error(error, extra)
        if found is None or full_error():
            raise
        sys.exit(report_user_error(found))


@contextlib.contextmanager
def config_keys(section: str, **renamed: str) -> Iterator[None]:
    """Name the config key of an ``OptionError`` raised inside the block (even wrapped, as
    ``hydra.utils.instantiate`` wraps what a constructor raised): ``<section>.<option>``, or
    ``renamed[option]`` for an argument its config spells otherwise
    (``factor="train.divergence_factor"``). Raises it as a ConfigError; others pass unchanged."""
    try:
        yield
    except Exception as error:
        found = user_error(error, (OptionError,))
        if not isinstance(found, OptionError):
            raise
        key, text = renamed.get(found.option, f"{section}.{found.option}"), str(found)
        named = text.startswith(found.option)
        raise ConfigError(key + text[len(found.option):] if named else f"{key}: {text}") from found


def is_path_key(key: str) -> bool:
    """Whether the config key of an override (``+``/``~`` prefixes allowed) holds a path."""
    name = key.lstrip("+~").rsplit(".", 1)[-1]
    return name in PATH_KEYS or name.endswith(PATH_SUFFIXES)


def hydra_quote(text: str) -> str:
    """``text`` as a single-quoted string of Hydra's override grammar, which reads it back as
    exactly ``text``: inside quotes only backslashes before a quote (or at the end) are escapes."""
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    trailing = len(body) - len(body.rstrip("\\"))
    return "'" + body + "\\" * trailing + "'"


def _reads_back(override: str, value: str) -> bool:
    """Whether Hydra parses ``override`` into ``value`` itself, into null or a bool, or the user
    quoted it for Hydra already."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import QuotedString
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(override)
    except HydraException:
        return False
    if parsed.is_sweep_override():
        return False
    return (isinstance(parsed._value, QuotedString) or parsed.value() is None
            or isinstance(parsed.value(), bool) or parsed.value() == value)


def quote_path_overrides(argv: list[str]) -> list[str]:
    """``argv`` with each path-valued ``key=value`` that Hydra would misread (``=``, ``,``,
    brackets, quotes, a number, ...) turned into ``key='value'`` (see ``hydra_quote``)."""
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-") and is_path_key(key) and not _reads_back(arg, value):
            arg = f"{key}={hydra_quote(value)}"
        quoted.append(arg)
    return quoted


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``"1 class"``, ``"4 classes"``: ``number`` and ``noun`` in the singular or the plural
    (default: ``noun + "s"``)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def command_arg(key: str, value: object) -> str:
    """``key=value`` quoted for a shell: what a printed command holds, so that it pastes back."""
    return shlex.quote(f"{key}={value}")


def check_command_line(config_name: str, argv: list[str] | None = None) -> None:
    """Quote path values for Hydra (``quote_path_overrides``, in ``sys.argv`` when ``argv`` is
    None), then compose ``config_name`` with the command-line overrides before Hydra runs: an
    unknown key, a missing group option or a syntax error becomes one line and exit code 2."""
    args = quote_path_overrides(sys.argv[1:] if argv is None else argv)
    if argv is None:
        sys.argv[1:] = args
    try:
        check_overrides(args, config_name=config_name)
    except ConfigError as error:
        sys.exit(report_user_error(error))


BEST = "best"  # checkpoint=best: the best.pth beside the final.pth the tool would pick
log = logging.getLogger("checkpoint")


def _final_evaluation(path: Path) -> dict | None:
    """The checked ``final_metrics.json`` of the run that holds ``path``
    (``<run>/checkpoints/final.pth``) when that run is completed (finished, or early-stopped)
    with a final evaluation (a finite AP or AP50), else None.

    Raises:
        RunFileError: the file is there but unreadable or malformed (too large, not JSON, ...).
    """
    if path.parent.name != run_files.CHECKPOINTS:
        return None
    run_dir = path.parent.parent
    source = str(run_dir / run_files.FINAL_METRICS)
    final = check_final(run_files.read_final_metrics(run_dir), source)
    if final is None or final.get("status", run_files.FINISHED) not in run_files.COMPLETED:
        return None
    return final if any(finite_number(final.get(key)) is not None for key in ("AP50", "AP")) \
        else None


def _when(path: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))


def choose_checkpoint(outputs_root: str | Path) -> tuple[Path, str] | None:
    """The ``final.pth`` the tools use when no ``checkpoint=`` is given, and why (one line).

    The newest (by modification time) ``final.pth`` of a run that finished with a final
    evaluation (``final_metrics.json``: status finished or early-stopped, a finite AP50 or AP),
    so that a later unfinished, diverged or unevaluated run (a small experiment) does not swap
    the model; without any such run, the newest ``final.pth``. Runs whose ``final_metrics.json``
    cannot be read or is malformed are skipped and counted in the reason. None when there is
    no ``final.pth`` at all.
    """
    root = Path(outputs_root)
    candidates = [p for p in root.rglob(run_files.FINAL) if p.is_file()] if root.is_dir() else []
    candidates.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    if not candidates:
        return None
    malformed = 0
    for path in candidates:
        try:
            final = _final_evaluation(path)
        except RunFileError:
            malformed += 1
            continue
        if final is not None:
            key = "AP50" if finite_number(final.get("AP50")) is not None else "AP"
            reason = (f"newest finished, evaluated run: {path} ({key} {final[key]:.3f}, "
                      f"{_when(path)})")
            break
    else:
        path = candidates[0]
        reason = f"no finished, evaluated run; the newest final.pth: {path} ({_when(path)})"
    if malformed:
        reason += f"; skipped {malformed} run(s) with an unreadable {run_files.FINAL_METRICS}"
    return path, reason + "; pin one with checkpoint=PATH"


def resolve_checkpoint(cfg, *, hint: str = "train one first (make train)") -> Path:
    """``cfg.checkpoint`` if set, else the ``final.pth`` ``choose_checkpoint`` picks under
    ``cfg.outputs_root`` (the newest finished, evaluated run; the choice and why are logged);
    ``checkpoint=best``: the ``best.pth`` beside that ``final.pth`` (the run's best
    evaluation, ``train.best_metric``).

    Raises:
        ConfigError: none given and none found, or ``best`` and that run kept none (the message
            says what to do: ``hint``).
    """
    if cfg.checkpoint is not None and cfg.checkpoint != BEST:
        return Path(cfg.checkpoint)
    chosen = choose_checkpoint(cfg.outputs_root)
    if chosen is None:
        raise ConfigError(f"no checkpoint found under {cfg.outputs_root}/; {hint} or pass "
                          f"checkpoint=PATH")
    latest, reason = chosen
    log.info("checkpoint: %s", reason)
    if cfg.checkpoint != BEST:
        return latest
    best = latest.parent / run_files.BEST
    if not best.is_file():
        raise ConfigError(f"checkpoint=best: the chosen run's {latest.parent} holds no "
                          f"{run_files.BEST} (it is written when train.eval_period > 0 and "
                          f"train.best_metric is set); pass checkpoint=PATH")
    return best
