"""Errors a user can act on.

The command line prints any :class:`UserError` as one line (no traceback)
and exits with status 2; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, a missing file or an unusable setting, with what to do."""


class DataError(UserError):
    """The dataset or the feature cache is missing, malformed or inconsistent."""


class ConfigError(UserError):
    """A configuration profile or override is invalid."""
