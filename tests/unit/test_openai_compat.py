"""The one retry policy and key handling that every OpenAI-compatible backend shares."""

from __future__ import annotations

import random

import openai
import pytest

from dnd.errors import ConfigError
from dnd.chat.compat import NO_KEY, RetryPolicy, describe, read_api_key, retry_after_s, retryable

try:  # the HTTP library the installed openai client is built on (httpx2 in its later releases)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older openai releases
    import httpx


def status_error(status: int, headers: dict | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request, json={"error": {"message": "nope"}})
    cls = {429: openai.RateLimitError, 400: openai.BadRequestError, 404: openai.NotFoundError}.get(
        status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls("nope", response=response, body=None)


def test_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("DND_TEST_KEY", " sk-abc ")
    assert read_api_key("DND_TEST_KEY", "summarizer 'openai'") == "sk-abc"
    assert read_api_key("none", "x") == NO_KEY and read_api_key(None, "x") == NO_KEY
    monkeypatch.delenv("DND_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError, match=r"captioner 'openai-vision' reads its API key from .*DND_TEST_MISSING"):
        read_api_key("DND_TEST_MISSING", "captioner 'openai-vision'")
    with pytest.raises(ConfigError, match="must name an environment variable.*42"):
        read_api_key(42, "x")


def test_which_failures_are_retried():
    assert retryable(status_error(429)) and retryable(status_error(503)) and retryable(status_error(408))
    assert not retryable(status_error(400)) and not retryable(status_error(404))
    request = httpx.Request("POST", "http://127.0.0.1:9/v1")
    assert retryable(openai.APITimeoutError(request)) and retryable(openai.APIConnectionError(request=request))
    assert not retryable(ValueError("bad json"))


def test_retry_after_in_seconds_or_milliseconds():
    assert retry_after_s(status_error(429, {"retry-after": "2.5"})) == 2.5
    assert retry_after_s(status_error(429, {"retry-after-ms": "300", "retry-after": "9"})) == 0.3
    # An HTTP date is not a number of seconds: the backoff applies instead.
    assert retry_after_s(status_error(429, {"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"})) == 0.0
    assert retry_after_s(ValueError()) == 0.0


def test_delay_is_jittered_backoff_with_retry_after_as_a_floor_and_a_cap():
    policy = RetryPolicy(max_retries=5, backoff_s=1.0, backoff_cap_s=30.0)
    # Retry 2: d = 1 * 2**2 = 4, so the wait is 2 + uniform(0, 2); the same rng draw gives it exactly.
    draw = random.Random(7).uniform(0, 2)
    assert policy.delay(2, status_error(503), random.Random(7)) == pytest.approx(2 + draw)
    # A longer Retry-After wins over the backoff; a shorter one does not shorten it.
    assert policy.delay(0, status_error(429, {"retry-after": "12"}), random.Random(7)) == 12.0
    assert 0.5 <= policy.delay(0, status_error(429, {"retry-after": "0.1"}), random.Random(7)) <= 1.0
    # Neither may exceed the cap.
    assert policy.delay(10, status_error(503), random.Random(7)) == 30.0
    assert policy.delay(0, status_error(429, {"retry-after": "600"}), random.Random(7)) == 30.0


def test_failures_are_described_in_one_line():
    assert describe(status_error(400)) == "HTTP 400 (BadRequestError): nope"
    request = httpx.Request("POST", "http://127.0.0.1:9/v1")
    assert describe(openai.APITimeoutError(request)).startswith("APITimeoutError: ")
