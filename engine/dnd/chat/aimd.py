"""How many requests an OpenAI-compatible backend keeps in flight: additive increase while the
endpoint answers, multiplicative decrease when it says it is overloaded (HTTP 429 or 503).

Pure arithmetic on a window ``w`` (a float; :attr:`AIMD.limit` is the integer number of requests
allowed in flight): no clock, no I/O, so the rule is tested by feeding it outcomes.

* start: ``w = min(start, ceiling)``;
* slow start, until the first overload: ``w += 1`` per success, so the window doubles every round
  trip and reaches a high-limit endpoint's capacity within a few seconds;
* afterwards: ``w += step`` per success (``step`` = 1/50: one more request in flight per 50
  answers). A constant step rather than TCP's ``1/w`` keeps the saw-tooth long at small windows,
  so an endpoint that allows a few requests a second sees few 429s;
* growth only counts answers that came back while the window was full: a window that is not in
  use has shown nothing about the endpoint, and must not grow to the ceiling unnoticed;
* overload: ``w = max(floor, w * 0.5)`` at the first (leaving slow start, whose last doubling may
  overshoot by up to 2x), ``w = max(floor, w * 0.8)`` after it. An overload of a request that
  started before the last decrease does not decrease again: it reports the same congestion, and
  one burst of 429s must not collapse the window to the floor;
* floor 1, ceiling ``max_concurrency``.
"""

from __future__ import annotations

import math

#: Window growth per success once slow start is over.
STEP = 1 / 50
#: Multiplicative decrease at the first overload, and at every later one.
FIRST_DECREASE = 0.5
DECREASE = 0.8
FLOOR = 1


class AIMD:
    """The window of one backend's requests; see the module doc for the rule."""

    def __init__(self, ceiling: int, start: int):
        self.ceiling = ceiling
        self.window = float(max(FLOOR, min(start, ceiling)))
        self.slow_start = True
        #: Bumped by every decrease; a request remembers the epoch it started in.
        self.epoch = 0
        self.decreases = 0

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return max(FLOOR, min(self.ceiling, math.floor(self.window)))

    def success(self, window_full: bool) -> None:
        """An answer came back; ``window_full``: ``limit`` requests were in flight when it did."""
        if not window_full:
            return
        self.window = min(float(self.ceiling), self.window + (1.0 if self.slow_start else STEP))

    def overload(self, started_epoch: int) -> bool:
        """A 429/503 for a request that started in ``started_epoch``; True if the window shrank."""
        if started_epoch < self.epoch:
            return False
        factor = FIRST_DECREASE if self.slow_start else DECREASE
        self.window = max(float(FLOOR), self.window * factor)
        self.slow_start = False
        self.epoch += 1
        self.decreases += 1
        return True
