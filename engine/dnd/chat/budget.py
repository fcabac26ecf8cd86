"""Optional per-minute budgets of an OpenAI-compatible backend: requests and tokens per minute.

Both are paced evenly rather than spent in a burst at the start of each minute, because hosted
endpoints also enforce their per-minute limits over shorter periods:

* ``requests_per_minute = r``: request starts are at least ``60 / r`` seconds apart, so no
  60-second window ever holds more than ``r`` of them;
* ``tokens_per_minute = t``: each answer's reported tokens (prompt + completion) push the earliest
  next start back by ``tokens * 60 / t`` seconds. Tokens are known only once an answer is back, so
  the requests already in flight may overshoot the budget by their own tokens; the average over a
  run stays within it.

Times are seconds on a monotonic clock the caller passes in (tests pass a fake one).
"""

from __future__ import annotations


class RequestBudget:
    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None):
        self.request_gap_s = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.seconds_per_token = 60.0 / tokens_per_minute if tokens_per_minute else 0.0
        self._next_request = float("-inf")
        self._next_token = float("-inf")

    def wait_s(self, now: float) -> float:
        """Seconds until a request may start (0: now)."""
        return max(0.0, self._next_request - now, self._next_token - now)

    def started(self, now: float) -> None:
        if self.request_gap_s:
            self._next_request = max(self._next_request, now) + self.request_gap_s

    def used_tokens(self, now: float, tokens: int) -> None:
        if self.seconds_per_token and tokens > 0:
            self._next_token = max(self._next_token, now) + tokens * self.seconds_per_token
