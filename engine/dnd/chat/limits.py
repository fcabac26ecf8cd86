"""The concurrency and budget options that every OpenAI-compatible backend takes, checked once.

* ``max_concurrency`` (default 128): the ceiling of requests in flight; the adaptive window of
  :mod:`dnd.chat.aimd` never exceeds it.
* ``initial_concurrency`` (default 2): requests in flight at the start, before the endpoint has
  answered anything.
* ``requests_per_minute``, ``tokens_per_minute`` (default null: none): budgets the backend never
  exceeds whatever the endpoint allows (:mod:`dnd.chat.budget`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dnd.errors import ConfigError

DEFAULT_MAX_CONCURRENCY = 128
DEFAULT_INITIAL_CONCURRENCY = 2


@dataclass(frozen=True)
class Limits:
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    initial_concurrency: int = DEFAULT_INITIAL_CONCURRENCY
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    @classmethod
    def checked(cls, who: str, max_concurrency: Any, initial_concurrency: Any, requests_per_minute: Any,
                tokens_per_minute: Any) -> "Limits":
        """The options as given, or a :class:`ConfigError` naming ``who``, the option and its value."""
        for name, value in (("max_concurrency", max_concurrency), ("initial_concurrency", initial_concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{who} option {name} must be an integer >= 1, got {value!r}")
        for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ConfigError(f"{who} option {name} must be a number > 0, or null for no budget; got {value!r}")
        return cls(max_concurrency, initial_concurrency,
                   None if requests_per_minute is None else float(requests_per_minute),
                   None if tokens_per_minute is None else float(tokens_per_minute))
