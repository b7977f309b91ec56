"""The common base of every error that is the user's to fix, not the program's.

A tool turns any ``UserError`` (a bad config value, a missing or malformed dataset, a refused or
unreadable checkpoint, an input it cannot read, ...) into one line on stderr and exit code 2;
anything else is a bug and keeps its traceback. Each layer raises its own subclass (DatasetError,
CheckpointError, SpecError, InputError, ...), so callers can still catch the narrow kind.
"""

from __future__ import annotations

__all__ = ["OptionError", "UserError"]


class UserError(Exception):
    """Something the user can fix (a value, a file, an input): its message is one sentence that
    says what is wrong and, where it can, what to do."""


class OptionError(UserError, ValueError):
    """A constructor's option outside what it accepts (a precision, a device, a schedule's
    choice). ``option`` names the argument and the message begins with it ("on_nonfinite must
    be 'stop' or 'skip', got 'ignore'"), so that a caller that read the value from a config
    file can name the config key instead (``detector_cli.cli.config_keys``)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option

    def __reduce__(self):  # pickled whole (a launcher sends a job's error to another process)
        return type(self), (self.option, str(self))
