"""Errors a user can meet. Each carries one line that says what was wrong and what to do.

The CLI prints ``str(err)`` for these and exits non-zero without a traceback.
"""


class T2VTurboError(Exception):
    """Base class for user-facing errors (one-line message, no traceback in the CLI)."""


class ConfigError(T2VTurboError):
    """A recipe or override is wrong: unknown key, wrong type, missing file."""


class MissingWeightError(T2VTurboError):
    """A model weight is not on this machine; the message names the file/hub id and how to provide it."""


class CheckpointError(T2VTurboError):
    """A checkpoint file is truncated, corrupt, unsafe or has the wrong layout."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle would execute code on load; we refuse it."""


class VideoReadError(T2VTurboError):
    """A video file cannot be decoded."""


class UnknownRewardError(T2VTurboError):
    """A reward name is not in the registry."""


class TrainingError(T2VTurboError):
    """Training cannot go on (e.g. too many non-finite losses in a row)."""


class TrainingInterrupted(T2VTurboError):
    """Ctrl-C or SIGTERM during training: a checkpoint was saved at the current step (``checkpoint``)."""

    def __init__(self, message: str, checkpoint: str | None = None, step: int = 0):
        super().__init__(message)
        self.checkpoint, self.step = checkpoint, step
