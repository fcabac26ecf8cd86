"""What a run shows on the terminal: dnd's own progress and real warnings, not Ray's engine chatter.

Ray writes everything it logs to the session's log files (``/tmp/ray/session_*/logs``: the
driver's ``python-core-driver-*.log``, ``ray-data/``, each worker's ``.log``/``.err``). It also
echoes a lot of it to the driver's terminal: each Dataset's execution plan, "Started a local Ray
instance", and native (C++) error lines such as Ray Data's warning that every actor pool's
constructor arguments live in the object store. Those copies are what this module keeps off the
terminal; the files keep them all.

Someone debugging Ray gets everything back with ``dnd --ray-logs ...`` or ``DND_RAY_LOGS=1``, and
Ray's own settings win where they are set: ``RAY_LOGGER_LEVEL`` (Ray's Python logger),
``RAY_DATA_LOGGING_CONFIG`` (Ray Data's logging), ``RAY_BACKEND_LOG_LEVEL`` (native logs).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import Any

#: A native Ray log line: "[2026-12-01 21:11:47,216 E 3652 3652] core_worker.cc:2465: ...",
#: possibly behind the "(Actor pid=123, ip=...)" prefix of a worker's streamed output.
_NATIVE_LINE = re.compile(rb"^(\(.*?pid=\d+(, ip=[^)]*)?\) )?\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] ")

#: Ray Data's notice that it shows no progress bars (dnd turns them off when not on a terminal).
_PROGRESS_NOTICE = "Progress bars disabled"


def ray_logs_requested() -> bool:
    """True when the user asked to see Ray's own output on the terminal."""
    return os.environ.get("DND_RAY_LOGS", "").strip().lower() in ("1", "true", "yes", "on")


def ray_init_options() -> dict[str, Any]:
    """``ray.init`` options for a quiet driver: Ray's Python logger at WARNING unless the user set
    ``RAY_LOGGER_LEVEL`` or asked for Ray's logs."""
    if ray_logs_requested() or os.environ.get("RAY_LOGGER_LEVEL"):
        return {}
    return {"logging_level": logging.WARNING}


class _DropProgressNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_PROGRESS_NOTICE)


def quiet_ray_data() -> None:
    """Ray Data's console handler shows warnings and errors only; its file handlers keep every
    record (execution plans, per-operator statistics). Call after ``import ray.data``."""
    if ray_logs_requested() or os.environ.get("RAY_DATA_LOGGING_CONFIG"):
        return
    from ray.data._internal.logging import SessionFileHandler

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, SessionFileHandler):
            continue
        handler.setLevel(max(handler.level, logging.WARNING))
        if not any(isinstance(f, _DropProgressNotice) for f in handler.filters):
            handler.addFilter(_DropProgressNotice())


#: Whether fd 2 was a terminal when the filter took it over (None: no filter is running).
_TERMINAL_UNDER_FILTER: bool | None = None


def stderr_is_terminal() -> bool:
    """Whether the user's standard error is a terminal, also while :class:`NativeLogFilter` has
    put a pipe in its place (progress bars are drawn only on a terminal)."""
    if _TERMINAL_UNDER_FILTER is not None:
        return _TERMINAL_UNDER_FILTER
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class NativeLogFilter:
    """Drops native Ray log lines from this process's standard error (file descriptor 2).

    Ray's C++ core writes its error lines to the session's log file and copies them to fd 2, below
    Python, so only a filter on the descriptor itself can keep them off the terminal. Every other
    byte (dnd's lines, Python warnings and tracebacks, workers' streamed output, progress bars that
    redraw one line with carriage returns) passes unchanged and at once.
    """

    def __init__(self) -> None:
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "NativeLogFilter":
        global _TERMINAL_UNDER_FILTER
        if ray_logs_requested() or os.environ.get("RAY_BACKEND_LOG_LEVEL"):
            return self
        try:
            sys.stderr.flush()
            terminal = os.isatty(2)
            read_end, write_end = os.pipe()
            self._saved = os.dup(2)
            os.dup2(write_end, 2)
            os.close(write_end)
        except OSError:  # no usable fd 2 (embedded interpreters): show everything
            self._saved = None
            return self
        _TERMINAL_UNDER_FILTER = terminal
        self._thread = threading.Thread(target=_pump, args=(read_end, self._saved), daemon=True,
                                        name="dnd-stderr-filter")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Put the real standard error back and flush what the filter still holds."""
        global _TERMINAL_UNDER_FILTER
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        # Restoring fd 2 closes the pipe's last write end, so the pump reads EOF and finishes.
        os.dup2(self._saved, 2)
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self._saved)
        self._saved = None
        _TERMINAL_UNDER_FILTER = None

    def __enter__(self) -> "NativeLogFilter":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _pump(read_end: int, out: int) -> None:
    """Copy ``read_end`` to ``out`` without native Ray lines. A line is held back only while it
    could still be one (it starts with "[" or "("); any other partial line, such as a progress bar
    redrawn with carriage returns, is passed on as soon as it arrives."""
    with os.fdopen(read_end, "rb", buffering=0) as source:
        buffer = b""
        passing = False  # the rest of the current line was already judged harmless
        while True:
            chunk = source.read(65536)
            if chunk:
                buffer += chunk
            kept = []
            while buffer:
                end = buffer.find(b"\n")
                if passing or end >= 0:
                    piece = buffer if end < 0 else buffer[:end + 1]
                    buffer = buffer[len(piece):]
                    if passing or not _NATIVE_LINE.match(piece):
                        kept.append(piece)
                    passing = end < 0
                elif buffer[:1] in (b"[", b"(") and chunk:
                    break  # maybe a native line: wait for its end
                else:
                    if chunk or not _NATIVE_LINE.match(buffer):
                        kept.append(buffer)
                    buffer, passing = b"", True
            if kept:
                os.write(out, b"".join(kept))
            if not chunk:
                return
