"""A process whose working directory was deleted under it must still load models.

Model libraries resolve relative paths against the working directory when they are imported and
when they load weights (transformers resolves one at import). A Ray job's worker whose ``working_dir``
was removed (its node lost, its job's files cleaned up) then fails there with a bare
``FileNotFoundError`` from ``os.getcwd``, whatever absolute path the model has. dnd never reads a
relative path of its own after start-up, so moving such a process to the temp folder changes nothing
but that failure.
"""

from __future__ import annotations

import os
import tempfile


def ensure_working_directory() -> str | None:
    """If the working directory no longer exists, change to the temp folder; returns the folder moved
    to, or None when nothing was wrong."""
    try:
        os.getcwd()
        return None
    except FileNotFoundError:
        target = tempfile.gettempdir()
        os.chdir(target)
        return target
