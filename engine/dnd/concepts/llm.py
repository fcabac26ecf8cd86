"""Summarizer backend ``"openai"``: Step 2B through any OpenAI-compatible chat endpoint.

The paper uses GPT-3.5 Turbo; the same client reaches OpenAI, vLLM, Ollama, llama.cpp server and
other compatible servers by ``base_url``. Requests run in a bounded thread pool rather than on an
asyncio loop: a pipeline actor, a Serve replica, a notebook cell (which already runs a loop) and a
plain worker thread can all call ``simplify``/``summarize`` synchronously, with no loop to find or
create. The client's own retries are off so that every retry is decided, delayed and counted here.

Failures stay per item: one caption that gets a 400, or a reply with no label in it, yields a
failed :class:`Answer` for that item only, and the call still returns an answer for every input.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dnd.concepts import parsing, prompts
from dnd.concepts.base import SUMMARIZERS, Answer, Usage
from dnd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import openai

log = logging.getLogger(__name__)

#: Placeholder key for local servers that check none; the client refuses to start without one.
NO_KEY = "not-needed"
# HTTP statuses worth retrying: request timeout, conflict/lock, rate limit, and any server error.
_RETRY_STATUSES = frozenset({408, 409, 429})
_ERROR_TEXT_CHARS = 200


def source_digest(module: Any) -> str:
    """A short hash of a module's source text, so that editing a prompt or the reply parser
    changes every cache key that depends on it."""
    try:
        text = inspect.getsource(module)
    except (OSError, TypeError):
        # No source on disk (e.g. a zipped install): fall back to the module's public values.
        text = repr(sorted((k, repr(v)) for k, v in vars(module).items() if k.isupper()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@SUMMARIZERS.register("openai")
class OpenAISummarizer:
    """Simplify and summarize captions with an OpenAI-compatible chat model (A.1.3 prompts).

    Options (keyword, from the run config):

    * ``model``: chat model id; default ``gpt-3.5-turbo``, the paper's.
    * ``base_url``: endpoint, e.g. ``http://localhost:8000/v1`` for vLLM; None = OpenAI's.
    * ``api_key_env``: environment variable holding the key (default ``OPENAI_API_KEY``); it
      must be set when the summarizer is built. ``none`` (or null) for servers needing no key.
    * ``temperature``: default 0. The paper does not state one; 0 makes a rerun ask and cache
      the same thing, and the N candidates of a neuron still differ because each summary sees
      the captions in a different seeded order (``shuffles.summary_orders``). Set 1.0 for the
      API's default sampling.
    * ``max_tokens``: default 32, ample for a 1-5 word label and bounding a runaway reply.
    * ``max_concurrency``: requests in flight at once (default 8).
    * ``timeout_s``: per-request timeout in seconds (default 60).
    * ``max_retries``: retries after the first attempt on 408/409/429/5xx, timeouts and
      connection errors (default 5). Other 4xx and malformed responses fail at once: repeating
      them cannot succeed.
    * ``backoff_s``: base of the exponential backoff (default 1.0): before retry ``i`` (from 0)
      wait ``d/2 + uniform(0, d/2)`` with ``d = backoff_s * 2**i``, or the server's Retry-After
      if longer, never more than ``backoff_cap_s`` (default 30).

    ``usage``: ``requests`` counts HTTP requests sent (first attempts and retries), ``retries``
    the retries among them, ``failures`` the inputs whose answer failed; token counts come from
    the responses' ``usage``; ``extra`` adds ``unparseable`` (replies with no label).
    """

    def __init__(
        self,
        *,
        model: str = "gpt-3.5-turbo",
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 32,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        **unknown: Any,
    ):
        if unknown:
            raise ConfigError(
                f"unknown option(s) for summarizer 'openai': {', '.join(sorted(unknown))}; expected "
                "model, base_url, api_key_env, temperature, max_tokens, max_concurrency, timeout_s, "
                "max_retries, backoff_s, backoff_cap_s"
            )
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"summarizer 'openai' option model must be a model id, got {model!r}")
        if base_url is not None and (not isinstance(base_url, str) or "://" not in base_url):
            raise ConfigError(
                f"summarizer 'openai' option base_url must be an http(s) URL such as "
                f"'http://localhost:8000/v1', or null for OpenAI's; got {base_url!r}"
            )
        self.model = model.strip()
        self.base_url = base_url.rstrip("/") if base_url else None
        self.temperature = _number("temperature", temperature, low=0.0, high=2.0)
        self.max_tokens = _integer("max_tokens", max_tokens, low=1)
        self.max_concurrency = _integer("max_concurrency", max_concurrency, low=1)
        self.timeout_s = _number("timeout_s", timeout_s, low=0.0, open_low=True)
        self.max_retries = _integer("max_retries", max_retries, low=0)
        self.backoff_s = _number("backoff_s", backoff_s, low=0.0)
        self.backoff_cap_s = _number("backoff_cap_s", backoff_cap_s, low=0.0)
        self.api_key_env = api_key_env
        self._api_key = _read_api_key(api_key_env)

        self.cache_key = (
            f"openai:model={self.model}|base_url={self.base_url or 'default'}"
            f"|temperature={self.temperature:g}|max_tokens={self.max_tokens}"
            f"|prompts={source_digest(prompts)}|parser={source_digest(parsing)}"
        )
        self.usage = Usage(extra={"unparseable": 0})
        self._setup_runtime()

    # -- the Summarizer protocol -------------------------------------------------------------
    def simplify(self, captions: list[str]) -> list[Answer]:
        """One concept label per caption (prompt 1). Repeated captions are asked once."""
        captions = [str(c) for c in captions]
        unique = list(dict.fromkeys(captions))
        answers = dict(zip(unique, self._run([self._simplify_one] * len(unique), unique)))
        return [answers[c] for c in captions]

    def summarize(self, caption_sets: list[list[str]]) -> list[Answer]:
        """One candidate concept per caption list, in the order given (prompt 2 + few-shot)."""
        caption_sets = [[str(c) for c in captions] for captions in caption_sets]
        return self._run([self._summarize_one] * len(caption_sets), caption_sets)

    # -- other public helpers ----------------------------------------------------------------
    def check_endpoint(self) -> None:
        """Send one simplify request and raise :class:`ConfigError` if the endpoint cannot serve
        this configuration (wrong key, unknown model or URL, unreachable), so a run can stop at
        its start rather than fail every neuron."""
        import openai

        try:
            self._client().chat.completions.create(
                model=self.model,
                messages=prompts.simplify_messages("a red car parked on a street"),
                temperature=self.temperature,
                max_tokens=self.max_tokens,
            )
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403, 404):
                raise ConfigError(
                    f"summarizer endpoint {self.base_url or 'OpenAI'} rejected model {self.model!r} "
                    f"with HTTP {exc.status_code}: {_short(exc.message)}; check model, base_url and "
                    f"the key in {self.api_key_env}"
                ) from None
        except openai.APIConnectionError as exc:
            raise ConfigError(
                f"summarizer endpoint {self.base_url or 'OpenAI'} is unreachable: {_short(str(exc))}; "
                "check base_url"
            ) from None

    def close(self) -> None:
        with self._lock:
            if self._openai is not None:
                self._openai.close()
                self._openai = None

    def __repr__(self) -> str:  # the key stays out of logs
        return f"OpenAISummarizer({self.cache_key})"

    # Ray may ship the summarizer to an actor: drop what cannot be pickled and rebuild it there.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("_lock", "_openai", "_rng"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup_runtime()

    # -- internals ---------------------------------------------------------------------------
    def _setup_runtime(self) -> None:
        self._lock = threading.Lock()
        self._openai: "openai.OpenAI | None" = None
        # Jitter only spreads retries out; it never changes an answer, so it need not be seeded.
        self._rng = random.Random()

    def _client(self) -> "openai.OpenAI":
        with self._lock:
            if self._openai is None:
                import openai

                self._openai = openai.OpenAI(
                    api_key=self._api_key,
                    base_url=self.base_url,
                    timeout=self.timeout_s,
                    max_retries=0,
                )
            return self._openai

    def _run(self, calls: list, items: list) -> list[Answer]:
        if not items:
            return []
        if len(items) == 1:
            return [calls[0](items[0])]
        workers = min(self.max_concurrency, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dnd-llm") as pool:
            return list(pool.map(lambda call_item: call_item[0](call_item[1]), zip(calls, items)))

    def _simplify_one(self, caption: str) -> Answer:
        if not caption.strip():
            return self._fail("empty caption")
        return self._ask(prompts.simplify_messages(caption))

    def _summarize_one(self, captions: list[str]) -> Answer:
        if not any(c.strip() for c in captions):
            return self._fail("no captions to summarize")
        return self._ask(prompts.summarize_messages([c for c in captions if c.strip()]))

    def _ask(self, messages: list[dict[str, str]]) -> Answer:
        """One chat completion with retries; never raises for a per-request problem."""
        import openai

        client = self._client()
        last_error = ""
        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.usage.requests += 1
                if attempt:
                    self.usage.retries += 1
            try:
                response = client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                )
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                last_error = _describe(exc)
                retryable = status is None or status in _RETRY_STATUSES or status >= 500
                if not retryable:
                    return self._fail(last_error)
                if attempt < self.max_retries:
                    delay = self._backoff(attempt, exc)
                    log.debug("LLM request failed (%s); retry %d in %.2fs", last_error, attempt + 1, delay)
                    time.sleep(delay)
                continue
            except Exception as exc:  # noqa: BLE001 - a malformed body must fail one item, not the run
                detail = f"{type(exc).__name__}: {_short(str(exc))}"
                return self._fail(f"malformed response from endpoint: {detail}")
            return self._read(response)
        return self._fail(f"gave up after {self.max_retries + 1} attempts: {last_error}")

    def _read(self, response: Any) -> Answer:
        usage = getattr(response, "usage", None)
        with self._lock:
            if usage is not None:
                self.usage.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
                self.usage.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        choices = getattr(response, "choices", None) or []
        reply = choices[0].message.content if choices and choices[0].message else None
        label = parsing.parse_concept(reply)
        if label is None:
            with self._lock:
                self.usage.extra["unparseable"] = self.usage.extra.get("unparseable", 0) + 1
            return self._fail(f"unparseable reply: {_short(repr(reply))}")
        return Answer(label)

    def _fail(self, error: str) -> Answer:
        with self._lock:
            self.usage.failures += 1
        log.warning("summarizer request failed: %s", error)
        return Answer(None, error=error)

    def _backoff(self, attempt: int, exc: Exception) -> float:
        step = self.backoff_s * (2**attempt)
        with self._lock:
            delay = step / 2 + self._rng.uniform(0, step / 2)
        return min(max(delay, _retry_after(exc)), self.backoff_cap_s)


def _read_api_key(api_key_env: Any) -> str:
    if api_key_env is None or (isinstance(api_key_env, str) and api_key_env.strip().lower() == "none"):
        return NO_KEY
    if not isinstance(api_key_env, str) or not api_key_env.strip():
        raise ConfigError(
            f"summarizer 'openai' option api_key_env must name an environment variable (or be "
            f"'none' for a server without keys), got {api_key_env!r}"
        )
    key = os.environ.get(api_key_env.strip(), "").strip()
    if not key:
        raise ConfigError(
            f"summarizer 'openai' reads its API key from the environment variable {api_key_env!r}, "
            "which is not set; set it, or set api_key_env: none for a local server that needs no key"
        )
    return key


def _retry_after(exc: Exception) -> float:
    """Seconds the server asked us to wait (Retry-After / retry-after-ms), 0 when it did not."""
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


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    if status is not None:
        return f"HTTP {status}: {_short(getattr(exc, 'message', str(exc)))}"
    return f"{type(exc).__name__}: {_short(str(exc))}"


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _ERROR_TEXT_CHARS else text[: _ERROR_TEXT_CHARS - 3] + "..."


def _integer(name: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"summarizer 'openai' option {name} must be an integer >= {low}, got {value!r}")
    return value


def _number(
    name: str, value: Any, *, low: float, high: float | None = None, open_low: bool = False
) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad:
        bad = value <= low if open_low else value < low
        bad = bad or (high is not None and value > high)
    if bad:
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        if high is not None:
            bound += f" and <= {high:g}"
        raise ConfigError(f"summarizer 'openai' option {name} must be a number {bound}, got {value!r}")
    return float(value)
