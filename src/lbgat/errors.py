"""User-facing errors.

Anything a user can cause (bad flags, missing data, a corrupt file) raises a subclass of
:class:`LbgatError`. The command line prints its message as one line and exits non-zero;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LbgatError(Exception):
    """An error caused by the user's input; its message is a complete, one-line explanation."""

    exit_code: int = 2
    label: str = "error"  # how the command line introduces the message


class ConfigError(LbgatError):
    """An invalid, unknown or inconsistent setting."""


class DataError(LbgatError):
    """Missing, corrupt or mis-laid-out data, or a failed download."""


class CheckpointError(LbgatError):
    """A checkpoint that cannot be read, or that does not fit the requested model."""


class UnsafeCheckpointError(CheckpointError):
    """A file that holds pickled code or objects, refused before anything in it could run."""


class WriteError(LbgatError):
    """A file could not be written (a full disk, a quota); the message says what is intact and what to do."""


class FolderBusyError(LbgatError):
    """Another process is writing the folder a command would write (its lock is held)."""
