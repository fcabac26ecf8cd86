"""The gate every request of one OpenAI-compatible backend passes before it is sent: at most
:attr:`AIMD.limit` in flight, the per-minute budgets, and a server's Retry-After.

Lives on one asyncio loop (:mod:`dnd.chat.loop`) and is touched only from it, so its counters
need no lock. A Retry-After on a 429/503 holds back every new start, not just the retry of the
request that got it: the server spoke about the client, and the other requests would only collect
429s of their own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from dnd.chat.aimd import AIMD
from dnd.chat.budget import RequestBudget

#: Statuses that mean "too many requests", and so shrink the window.
OVERLOAD_STATUSES = frozenset({429, 503})


class RequestGate:
    def __init__(self, aimd: AIMD, budget: RequestBudget, clock: Callable[[], float] = time.monotonic):
        self.aimd = aimd
        self.budget = budget
        self.clock = clock
        self.in_flight = 0
        self.peak_in_flight = 0
        self.overloads = 0
        self._hold_until = float("-inf")
        # Waiters queue on a condition and a release wakes only as many as there are free slots:
        # waking all of them (an event) costs a wake-up per queued request per answer, which at
        # hundreds queued and a hundred answers a second is most of a CPU.
        self._slots = asyncio.Condition()
        #: Requests waiting for nothing but a slot: the window is what holds them back.
        self._queued = 0

    def _wait_s(self, now: float) -> float:
        return max(0.0, self._hold_until - now, self.budget.wait_s(now))

    async def acquire(self) -> int:
        """Wait for a slot; returns the window's epoch at the start (for :meth:`release`)."""
        async with self._slots:
            while True:
                now = self.clock()
                wait = self._wait_s(now)
                if wait <= 0 and self.in_flight < self.aimd.limit:
                    self.in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                    self.budget.started(now)
                    return self.aimd.epoch
                queued = wait <= 0
                self._queued += queued
                try:
                    # Woken by a release, or when the hold or the budget's wait is over.
                    await asyncio.wait_for(self._slots.wait(), timeout=wait if wait > 0 else None)
                except asyncio.TimeoutError:
                    pass
                finally:
                    self._queued -= queued

    async def release(self, epoch: int, *, status: int | None = None, ok: bool = False, tokens: int = 0,
                      hold_s: float = 0.0) -> None:
        """A request that got a slot is over: answered (``ok``), or failed with HTTP ``status``
        (None: no status, e.g. a timeout); ``hold_s``: the server's Retry-After, already capped."""
        async with self._slots:
            now = self.clock()
            if ok:
                # in_flight still counts this request. Requests queued for a slot also say the
                # window was in use: several answers can arrive before a woken waiter takes its
                # slot, and the in-flight count alone would then miss most of them.
                self.aimd.success(window_full=self.in_flight >= self.aimd.limit or self._queued > 0)
                self.budget.used_tokens(now, tokens)
            elif status in OVERLOAD_STATUSES:
                self.overloads += 1
                self.aimd.overload(epoch)
                self._hold_until = max(self._hold_until, now + hold_s)
            self.in_flight -= 1
            # One waiter per free slot (growth may have freed more than this one); at least one,
            # so that a waiter re-reads a new hold or budget and sleeps for it.
            self._slots.notify(max(1, self.aimd.limit - self.in_flight))
