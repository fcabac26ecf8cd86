"""One way to call an OpenAI-compatible chat endpoint, for every backend that does: the summarizer
of Step 2B (``concepts/llm.py``) and the vision captioner of Step 2A (``captioning/openai_vision.py``).

* **Key**: read from the environment variable the config names; ``none`` (or null) for a local
  server that checks none. The variable's value never reaches a log or a cache key.
* **Timeout**: per request; the ``openai`` client's own retries are off, so that every retry is
  decided, delayed and counted here.
* **Retry policy**, one for both backends:

  - retried: HTTP 408, 409, 429 and every 5xx; timeouts and dropped connections;
  - not retried: any other 4xx (the request itself is wrong, repeating it cannot help) and a
    response whose body cannot be read;
  - before retry ``i`` (from 0) wait ``d/2 + uniform(0, d/2)`` with ``d = backoff_s * 2**i``: the
    jitter spreads the retries of requests that failed together. A server's Retry-After (seconds,
    or ``retry-after-ms``) is a floor: the wait is never shorter than what the server asked for.
    Either way it is never longer than ``backoff_cap_s``. An HTTP-date Retry-After is ignored and
    the backoff applies.

* **Concurrency**: requests run as coroutines on one asyncio loop per backend
  (:mod:`dnd.chat.caller`, :mod:`dnd.chat.loop`), not a thread each. Before each attempt a request passes the
  backend's :class:`~dnd.chat.gate.RequestGate`: an adaptive window of requests in flight
  (:mod:`dnd.chat.aimd`: grows while answers come, shrinks on 429/503), the optional per-minute
  budgets (:mod:`dnd.chat.budget`), and a 429/503's Retry-After (capped as above), which
  holds back every new start of the backend, not just the retry of the request that got it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

from dnd.errors import ConfigError

#: Placeholder key for local servers that check none; the client refuses to start without one.
NO_KEY = "not-needed"
#: Statuses worth asking again: request timeout, conflict/lock, rate limit (and any 5xx).
RETRY_STATUSES = frozenset({408, 409, 429})
_ERROR_TEXT_CHARS = 200


def read_api_key(api_key_env: Any, who: str) -> str:
    """The key in the environment variable ``api_key_env``; :data:`NO_KEY` for ``none``/None.
    ``who`` names the backend in the error (e.g. "summarizer 'openai'")."""
    if api_key_env is None or (isinstance(api_key_env, str) and api_key_env.strip().lower() == "none"):
        return NO_KEY
    if not isinstance(api_key_env, str) or not api_key_env.strip():
        raise ConfigError(
            f"{who} option api_key_env must name an environment variable (or be 'none' for a server "
            f"without keys), got {api_key_env!r}"
        )
    key = os.environ.get(api_key_env.strip(), "").strip()
    if not key:
        raise ConfigError(
            f"{who} reads its API key from the environment variable {api_key_env!r}, which is not set; "
            "set it, or set api_key_env: none for a local server that needs no key"
        )
    return key


def make_client(api_key: str, base_url: str | None, timeout_s: float, connections: int) -> Any:
    """An ``openai.AsyncOpenAI`` client with the request timeout, without retries of its own, and
    with a connection pool that keeps ``connections`` alive (the concurrency ceiling), so a full
    window does not open and close connections at every request."""
    import openai

    try:  # the HTTP library the installed openai client is built on (httpx2 in its later releases)
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - older openai releases
        import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0,
                              http_client=openai.DefaultAsyncHttpxClient(limits=limits))


def retry_after_s(exc: BaseException) -> float:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``retry-after``), 0 if it did not."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return 0.0
    try:
        if headers.get("retry-after-ms"):
            return max(float(headers["retry-after-ms"]) / 1000.0, 0.0)
        if headers.get("retry-after"):
            return max(float(headers["retry-after"]), 0.0)
    except (TypeError, ValueError):
        pass  # an HTTP-date Retry-After: our own backoff applies
    return 0.0


def retryable(exc: BaseException) -> bool:
    """Whether a failed request is worth sending again (module doc)."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUSES or exc.status_code >= 500
    return False


def describe(exc: BaseException) -> str:
    """One line for a failed request: ``HTTP 503 (InternalServerError): ...`` or ``APITimeoutError: ...``."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        return f"HTTP {status} ({type(exc).__name__}): {short(getattr(exc, 'message', str(exc)))}"
    return f"{type(exc).__name__}: {short(str(exc))}"


def short(text: Any) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _ERROR_TEXT_CHARS else text[: _ERROR_TEXT_CHARS - 3] + "..."


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait (module doc)."""

    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_cap_s: float = 30.0

    def delay(self, attempt: int, exc: BaseException, rng: random.Random) -> float:
        step = self.backoff_s * (2**attempt)
        jittered = step / 2 + rng.uniform(0, step / 2)
        return min(max(jittered, retry_after_s(exc)), self.backoff_cap_s)
