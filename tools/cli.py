"""Start-up errors that are the user's, as one line on stderr and exit code 2, for every tool.

A bad config value, a missing or bad dataset, a missing or unreadable checkpoint, a checkpoint
for other classes: the user needs the one sentence that says what is wrong, not Hydra's "Error
executing job with overrides", "Error in call to target ..." and "set HYDRA_FULL_ERROR" lines
around it. ``HYDRA_FULL_ERROR=1`` keeps the full trace, for debugging.

The API (import it as the tools do: ``sys.path.insert(0, <tools dir>)``, then ``import cli``)::

    if __name__ == "__main__":
        cli.check_command_line("train")  # a typo'd key or group option: one line, exit 2
        main()

    @hydra.main(config_path="../configs", config_name="train", version_base="1.3")
    def main(cfg):
        with cli.exit_on_user_error():   # inside the task function, so Hydra never sees it
            run(cfg)

A tool whose library raises errors of its own kind passes them along:
``cli.exit_on_user_error(InputError, SpecError)``. ``user_error(error)`` finds the user's error
inside another (``hydra.utils.instantiate`` wraps what a constructor raised in an
``InstantiationException``); ``report_user_error(error)`` prints it and returns 2, for code that
catches the errors itself. ``USER_ERRORS`` are the types every tool treats so.
``resolve_checkpoint(cfg)`` is the tools' shared ``checkpoint=`` rule: the given path, or the
newest ``outputs/**/checkpoints/final.pth``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from config_checks import ConfigError, check_overrides

from detector.checkpoint import CheckpointError, find_latest_checkpoint
from detector.data import DatasetError
from detector.modeling.spec import SpecError

__all__ = ["USER_ERRORS", "check_command_line", "exit_on_user_error", "report_user_error",
           "resolve_checkpoint", "user_error"]

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DatasetError, CheckpointError,
                                                SpecError, FileNotFoundError)
EXIT_USER_ERROR = 2


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


def check_command_line(config_name: str, argv: list[str] | None = None) -> None:
    """Compose ``config_name`` with the command-line overrides before Hydra runs: an unknown
    key, a missing group option or a syntax error becomes one line and exit code 2."""
    try:
        check_overrides(sys.argv[1:] if argv is None else argv, config_name=config_name)
    except ConfigError as error:
        sys.exit(report_user_error(error))


def resolve_checkpoint(cfg, *, hint: str = "train one first (make train)") -> Path:
    """``cfg.checkpoint`` if set, else the newest ``final.pth`` under ``cfg.outputs_root``.

    Raises:
        ConfigError: none given and none found (the message says what to do: ``hint``).
    """
    if cfg.checkpoint is not None:
        return Path(cfg.checkpoint)
    latest = find_latest_checkpoint(cfg.outputs_root)
    if latest is None:
        raise ConfigError(f"no checkpoint found under {cfg.outputs_root}/; {hint} or pass "
                          f"checkpoint=PATH")
    return latest
