"""A stage's failure as the user should read it: one line naming the stage, not a Ray traceback.

Backends raise :class:`dnd.errors.DndError` (a model that cannot load, an option out of range) inside
Ray actors. Ray hands the driver an ``ActorDiedError`` whose text holds the worker's traceback, or a
``RayTaskError`` that wraps the original exception. :func:`named_stage` finds the DndError in either
and raises it again with the stage's name in front. Any other exception raised while an actor was
being created (a backend bug in a constructor) becomes one line too, with its type, and Ray's worker
log keeps the full traceback. A stage that fails because the cluster lost something it held (a node,
a worker process, the objects on them) is not a bug either: :func:`lost_to_the_cluster` names it, and
the line says that the same command resumes the run. Errors raised while a batch is processed that
are not DndErrors are bugs, and keep their traceback.
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


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything behind it: Ray's ``cause`` (a RayTaskError's original), ``__cause__``
    and ``__context__``, each once."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend([getattr(current, "cause", None), current.__cause__, current.__context__])


def dnd_error_inside(exc: BaseException) -> DndError | None:
    """The DndError that caused ``exc``: through ``cause`` / ``__cause__`` / ``__context__``, or
    named by the traceback text Ray carries for an actor that died in its constructor."""
    for current in _causes(exc):
        if isinstance(current, DndError):
            return current
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


#: Ray's errors for work lost with a process or node, not caused by the stage's own code. Ray Data
#: does not always hand these on as themselves: a task that failed on a dead node can reach the
#: driver as an ``UnserializableException`` whose text names the original, so the text is read too.
LOST_WORK = ("NodeDiedError", "LocalRayletDiedError", "WorkerCrashedError", "ActorDiedError", "ActorUnavailableError",
             "ObjectLostError", "OwnerDiedError", "ObjectFetchTimedOutError", "ObjectReconstructionFailedError",
             "ObjectReconstructionFailedMaxAttemptsExceededError", "ObjectReconstructionFailedLineageEvictedError",
             "OutOfMemoryError")
# In text, only Ray's own: a torch.OutOfMemoryError in a batch's traceback is the stage's to handle.
_LOST_NAME = re.compile(r"\bray\.exceptions\.(" + "|".join(sorted(LOST_WORK, key=len, reverse=True)) + r")\b")


def lost_to_the_cluster(exc: BaseException) -> str | None:
    """The name of the Ray error saying ``exc`` came from lost work (a dead node, worker or object),
    found in its chain of causes or in the text Ray carries for it; None for anything else."""
    for current in _causes(exc):
        for kind in type(current).__mro__:
            if kind.__name__ in LOST_WORK and kind.__module__.startswith("ray"):
                return kind.__name__
    found = _LOST_NAME.search(_ANSI.sub("", str(exc)))
    return found.group(1) if found else None


def lost_work_message(stage: str, kind: str) -> str:
    if kind == "OutOfMemoryError":
        what = "Ray's memory monitor killed one of its workers (OutOfMemoryError): give the stage smaller batches or the nodes more memory"
    else:
        what = f"the Ray cluster lost a node, worker or object it was using ({kind})"
    return (f"{stage}: {what}. Everything finished before is saved; run the same command again to resume, "
            "once the cluster has the nodes the stage needs")


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
        lost = lost_to_the_cluster(exc)
        if lost is not None:
            raise DndError(lost_work_message(name, lost)) from None
        raise
