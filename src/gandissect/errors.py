"""Errors a user can cause. The command line prints them as one line and exits non-zero."""


class GandissectError(Exception):
    """Bad input: the message names the file or value and what was expected."""


class ConfigError(GandissectError):
    pass


class CheckpointError(GandissectError):
    pass


class BadValueError(GandissectError, ValueError):
    """A value outside what is accepted (a scene size, a class name)."""
