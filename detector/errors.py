"""The common base of every error that is the user's to fix, not the program's.

A tool turns any ``UserError`` (a bad config value, a missing or malformed dataset, a refused or
unreadable checkpoint, an input it cannot read, ...) into one line on stderr and exit code 2;
anything else is a bug and keeps its traceback. Each layer raises its own subclass (DatasetError,
CheckpointError, SpecError, InputError, ...), so callers can still catch the narrow kind.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Something the user can fix (a value, a file, an input): its message is one sentence that
    says what is wrong and, where it can, what to do."""
