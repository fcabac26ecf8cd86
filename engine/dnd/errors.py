"""Errors a user can act on.

Everything raised as a :class:`DndError` is shown to the user as one clear message (the CLI prints it
without a traceback), so its text must name the bad value and what was expected.
"""


class DndError(ValueError):
    """A problem with the user's input or environment, explained in the message."""


class ConfigError(DndError):
    """The run configuration is malformed or names something that does not exist."""


class StorageError(DndError):
    """The output or probe location cannot be read or written."""
