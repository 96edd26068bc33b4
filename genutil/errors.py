"""The one family of errors a user can cause; main.py prints them as one line and exits 2."""

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError"]


class UserError(Exception):
    """Bad input from the user. The message is one line: 'problem: fix'."""


class ConfigError(UserError):
    """A bad experiment file or command-line override."""


class DataError(UserError):
    """A dataset that is missing or not in the expected on-disk layout."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unsafe, truncated or of another model."""
