"""Summarizer backend ``"openai"``: Step 2B through any OpenAI-compatible chat endpoint.

The paper uses GPT-3.5 Turbo; the same client reaches OpenAI, vLLM, Ollama, llama.cpp server and
other compatible servers by ``base_url``. ``simplify``/``summarize`` are synchronous, so a pipeline
actor, a Serve replica, a notebook cell (which already runs a loop) and a plain worker thread all
call them the same way; their requests run as coroutines on a loop of the backend's own
(:mod:`dnd.chat.caller`). Key, timeout, retries and the adaptive concurrency follow
:mod:`dnd.chat.compat`, which the vision captioner shares.

Failures stay per item: one caption that gets a 400, or a reply with no label in it, yields a
failed :class:`Answer` for that item only, and the call still returns an answer for every input.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from typing import Any

from dnd.chat.caller import ChatCaller
from dnd.chat.compat import RetryPolicy, read_api_key, short
from dnd.chat.limits import DEFAULT_INITIAL_CONCURRENCY, DEFAULT_MAX_CONCURRENCY, Limits
from dnd.concepts import parsing, prompts
from dnd.concepts.base import SUMMARIZERS, Answer, Usage
from dnd.errors import ConfigError

log = logging.getLogger(__name__)


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
    * ``max_concurrency`` (default 128): the most requests in flight. The number actually in
      flight adapts (:mod:`dnd.chat.aimd`): it starts at ``initial_concurrency`` (default 2), grows
      while the endpoint answers and shrinks on 429/503, whose Retry-After holds back every new
      request.
    * ``requests_per_minute``, ``tokens_per_minute`` (default null): budgets never exceeded,
      paced evenly over the minute (:mod:`dnd.chat.budget`).
    * ``timeout_s``: per-request timeout in seconds (default 60).
    * ``max_retries``, ``backoff_s``, ``backoff_cap_s`` (defaults 5, 1.0, 30): the retry policy
      of :mod:`dnd.chat.compat` (408/409/429/5xx, timeouts and connection errors are retried
      with jittered exponential backoff, never sooner than the server's Retry-After; other 4xx
      and malformed responses fail at once).

    ``usage``: ``requests`` counts HTTP requests sent (first attempts and retries), ``retries``
    the retries among them, ``failures`` the inputs whose answer failed; token counts come from
    the responses' ``usage``; ``extra`` adds ``unparseable`` (replies with no label) and the
    throughput: ``requests_per_s`` (while requests were in flight), ``rate_limited`` (429/503
    answers), ``peak_in_flight`` and ``concurrency`` (the window now).
    """

    def __init__(
        self,
        *,
        model: str = "gpt-3.5-turbo",
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 32,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        initial_concurrency: int = DEFAULT_INITIAL_CONCURRENCY,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        **unknown: Any,
    ):
        if unknown:
            raise ConfigError(
                f"unknown option(s) for summarizer 'openai': {', '.join(sorted(unknown))}; expected "
                "model, base_url, api_key_env, temperature, max_tokens, max_concurrency, initial_concurrency, "
                "requests_per_minute, tokens_per_minute, timeout_s, max_retries, backoff_s, backoff_cap_s"
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
        self.limits = Limits.checked("summarizer 'openai'", max_concurrency, initial_concurrency,
                                     requests_per_minute, tokens_per_minute)
        self.timeout_s = _number("timeout_s", timeout_s, low=0.0, open_low=True)
        self.max_retries = _integer("max_retries", max_retries, low=0)
        self.backoff_s = _number("backoff_s", backoff_s, low=0.0)
        self.backoff_cap_s = _number("backoff_cap_s", backoff_cap_s, low=0.0)
        self.api_key_env = api_key_env
        self.cache_key = (
            f"openai:model={self.model}|base_url={self.base_url or 'default'}"
            f"|temperature={self.temperature:g}|max_tokens={self.max_tokens}"
            f"|prompts={source_digest(prompts)}|parser={source_digest(parsing)}"
        )
        self.usage = Usage(extra={"unparseable": 0})
        self._caller = ChatCaller(
            read_api_key(api_key_env, "summarizer 'openai'"), self.base_url, self.timeout_s,
            RetryPolicy(self.max_retries, self.backoff_s, self.backoff_cap_s), self.usage, self.limits,
        )

    # -- the Summarizer protocol -------------------------------------------------------------
    def simplify(self, captions: list[str]) -> list[Answer]:
        """One concept label per caption (prompt 1). Repeated captions are asked once."""
        captions = [str(c) for c in captions]
        unique = list(dict.fromkeys(captions))
        answers = dict(zip(unique, self._answer_all([_simplify_messages(c) for c in unique])))
        return [answers[c] for c in captions]

    def summarize(self, caption_sets: list[list[str]]) -> list[Answer]:
        """One candidate concept per caption list, in the order given (prompt 2 + few-shot)."""
        caption_sets = [[str(c) for c in captions] for captions in caption_sets]
        return self._answer_all([_summarize_messages(captions) for captions in caption_sets])

    # -- other public helpers ----------------------------------------------------------------
    def check_endpoint(self) -> None:
        """Send one simplify request and raise :class:`ConfigError` if the endpoint cannot serve
        this configuration (wrong key, unknown model or URL, unreachable), so a run can stop at
        its start rather than fail every neuron."""
        import openai

        try:
            self._caller.send_once(
                model=self.model,
                messages=prompts.simplify_messages("a red car parked on a street"),
                temperature=self.temperature,
                max_tokens=self.max_tokens,
            )
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403, 404):
                raise ConfigError(
                    f"summarizer endpoint {self.base_url or 'OpenAI'} rejected model {self.model!r} "
                    f"with HTTP {exc.status_code}: {short(exc.message)}; check model, base_url and "
                    f"the key in {self.api_key_env}"
                ) from None
        except openai.APIConnectionError as exc:
            raise ConfigError(
                f"summarizer endpoint {self.base_url or 'OpenAI'} is unreachable: {short(str(exc))}; "
                "check base_url"
            ) from None

    def close(self) -> None:
        self._caller.close()

    def __repr__(self) -> str:  # the key stays out of logs
        return f"OpenAISummarizer({self.cache_key})"

    # -- internals ---------------------------------------------------------------------------
    def _answer_all(self, prepared: list[list[dict[str, str]] | str]) -> list[Answer]:
        """One answer per prepared item: its messages are asked (concurrently, through the
        caller's gate); a string is the reason it could not be asked."""
        asked = [p for p in prepared if not isinstance(p, str)]
        outcomes = iter(self._caller.create_many([self._request(messages) for messages in asked]))
        return [self._fail(p) if isinstance(p, str) else self._read(next(outcomes)) for p in prepared]

    def _request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return dict(model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens)

    def _read(self, outcome: Any) -> Answer:
        """The label in one request's outcome, or a failed answer saying why there is none."""
        if outcome.response is None:
            return self._fail(outcome.error or "no response")
        choices = getattr(outcome.response, "choices", None) or []
        reply = choices[0].message.content if choices and choices[0].message else None
        label = parsing.parse_concept(reply)
        if label is None:
            with self._caller.lock:
                self.usage.extra["unparseable"] = self.usage.extra.get("unparseable", 0) + 1
            return self._fail(f"unparseable reply: {short(repr(reply))}")
        return Answer(label)

    def _fail(self, error: str) -> Answer:
        self._caller.count(failures=1)
        log.warning("summarizer request failed: %s", error)
        return Answer(None, error=error)


def _simplify_messages(caption: str) -> list[dict[str, str]] | str:
    """Prompt 1 for one caption, or why it cannot be asked."""
    return prompts.simplify_messages(caption) if caption.strip() else "empty caption"


def _summarize_messages(captions: list[str]) -> list[dict[str, str]] | str:
    """Prompt 2 (with its few-shot turns) for one caption list, or why it cannot be asked."""
    kept = [c for c in captions if c.strip()]
    return prompts.summarize_messages(kept) if kept else "no captions to summarize"


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
