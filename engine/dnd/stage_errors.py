"""A stage's failure as the user should read it: one line naming the stage, not a Ray traceback.

Backends raise :class:`dnd.errors.DndError` (a model that cannot load, an option out of range) inside
Ray actors. Ray hands the driver an ``ActorDiedError`` whose text holds the worker's traceback, or a
``RayTaskError`` that wraps the original exception. :func:`named_stage` finds the DndError in either
and raises it again with the stage's name in front. Any other exception raised while an actor was
being created (a backend bug in a constructor) becomes one line too, with its type, and Ray's worker
log keeps the full traceback. Errors raised while a batch is processed that are not DndErrors are
bugs, and keep their traceback.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

from dnd import errors
from dnd.errors import DndError

# The last line of a Python traceback: "package.module.ErrorType: message".
_FINAL_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception)): (?P<message>.+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def dnd_error_inside(exc: BaseException) -> DndError | None:
    """The DndError that caused ``exc``: through ``cause`` / ``__cause__`` / ``__context__``, or
    named by the traceback text Ray carries for an actor that died in its constructor."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DndError):
            return current
        stack.extend([getattr(current, "cause", None), current.__cause__, current.__context__])
    final = _final_line(exc)
    if final is not None and final[0].startswith("dnd.errors."):
        kind = getattr(errors, final[0].rsplit(".", 1)[-1], DndError)
        return kind(final[1]) if isinstance(kind, type) and issubclass(kind, DndError) else DndError(final[1])
    return None


def _final_line(exc: BaseException) -> tuple[str, str] | None:
    for line in reversed(_ANSI.sub("", str(exc)).splitlines()):
        match = _FINAL_LINE.match(line.strip())
        if match:
            return match["type"], match["message"]
    return None


def _died_in_constructor(exc: BaseException) -> bool:
    return "error raised in its creation task" in str(exc)


@contextlib.contextmanager
def named_stage(name: str) -> Iterator[None]:
    """Run a stage; its DndError (or an actor's failure to start) surfaces as one line naming it."""
    try:
        yield
    except DndError:
        raise
    except Exception as exc:
        found = dnd_error_inside(exc)
        if found is not None:
            raise type(found)(f"{name}: {found}") from None
        if _died_in_constructor(exc):
            final = _final_line(exc)
            detail = f"{final[0].rsplit('.', 1)[-1]}: {final[1]}" if final else type(exc).__name__
            raise DndError(f"{name}: an actor could not start ({detail}); Ray's worker logs hold the traceback") from None
        raise
