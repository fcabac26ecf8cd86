"""One asyncio loop on a daemon thread, for synchronous callers of async I/O.

The OpenAI-compatible backends are called synchronously from a pipeline actor, a Serve replica,
a notebook cell (whose thread already runs a loop) or a plain thread. Running their requests on a
loop of their own serves all of these the same way: no loop to find or create in the caller's
thread, and one thread in all however many requests are in flight.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine


class LoopThread:
    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coroutine`` on the loop (started on first use) and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop()).result()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)
                self._thread.start()
            return self._loop

    def close(self, final: Coroutine[Any, Any, Any] | None = None) -> None:
        """Run ``final`` (e.g. closing a client bound to the loop), then stop the loop."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            if final is not None:
                final.close()  # never scheduled: close it so Python does not warn
            return
        if final is not None:
            asyncio.run_coroutine_threadsafe(final, loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
