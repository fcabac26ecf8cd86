"""The adaptive request gate through the real client against the loopback stub: the ceiling, the
requests-per-minute budget, a Retry-After that holds back every request, the throughput counts,
and the options' errors, for the summarizer and the vision captioner alike."""

from __future__ import annotations

import pytest

import dnd.captioning.openai_vision  # noqa: F401 - registers the backend
import dnd.concepts.llm  # noqa: F401 - registers the backend
from dnd.captioning.base import CAPTIONERS
from dnd.concepts.base import SUMMARIZERS
from dnd.errors import ConfigError
from tests.support.llm_stub import StubLLM


def summarizer(server, **options):
    settings = dict(base_url=server.url, api_key_env="none", timeout_s=5.0, backoff_s=0.01)
    settings.update(options)
    return SUMMARIZERS.create("openai", **settings)


def captions(n):
    return [f"a photo of item{i} on a table" for i in range(n)]


def test_window_grows_to_the_ceiling_and_never_past_it():
    # Answers slow enough (0.2 s) that six requests the gate lets through overlap at the stub even
    # on a busy machine.
    with StubLLM(delay_s=0.2) as server:
        llm = summarizer(server, max_concurrency=6, initial_concurrency=2)
        answers = llm.simplify(captions(60))
    assert all(a.ok for a in answers)
    # Slow start doubles 2 -> 4 -> 6 within a few round trips; 6 is the ceiling.
    assert server.max_in_flight == 6
    assert llm.usage.extra["peak_in_flight"] == 6 and llm.usage.extra["concurrency"] == 6


def test_requests_per_minute_is_never_exceeded():
    with StubLLM() as server:
        llm = summarizer(server, requests_per_minute=600)  # one start per 0.1 s
        starts = []
        budget = llm._caller.gate.budget
        record = budget.started
        budget.started = lambda now: (starts.append(now), record(now))
        llm.simplify(captions(15))
    # The client's own start times: exactly one gap or more apart. (Arrival times at the stub add
    # the machine's scheduling jitter, so the budget is checked where it is kept.)
    assert len(starts) == 15 and min(b - a for a, b in zip(starts, starts[1:])) >= 0.1 - 1e-9
    assert len(server.requests) == 15


def test_retry_after_holds_back_every_request_not_only_the_retry():
    with StubLLM(retry_after=0.5) as server:
        llm = summarizer(server, initial_concurrency=1)
        answers = llm.simplify(["a red car stub:429*1"] + captions(3))
    assert all(a.ok for a in answers)
    [rejected] = [r["t"] for r in server.requests if r["mode"] == "429"]
    later = [r["t"] for r in server.requests if r["t"] > rejected]
    assert len(later) == 4  # the retry and the three others
    assert min(later) - rejected >= 0.5
    assert llm.usage.extra["rate_limited"] == 1 and llm.usage.retries == 1


def test_a_429_shrinks_the_window_and_no_request_fails():
    with StubLLM(delay_s=0.05, rate_limit=40) as server:
        llm = summarizer(server, max_concurrency=32, initial_concurrency=8)
        answers = llm.simplify(captions(80))
    assert all(a.ok for a in answers) and llm.usage.failures == 0
    assert server.counts["429"] >= 1 and llm.usage.extra["rate_limited"] == server.counts["429"]
    assert llm._caller.gate.aimd.decreases >= 1 and not llm._caller.gate.aimd.slow_start
    usage = llm.usage.as_dict()
    assert usage["requests"] == 80 + server.counts["429"]
    assert usage["requests_per_s"] > 0 and usage["prompt_tokens"] == server.prompt_tokens


@pytest.mark.parametrize("name, value", [
    ("max_concurrency", 0), ("initial_concurrency", "4"), ("requests_per_minute", 0),
    ("tokens_per_minute", -5), ("requests_per_minute", True),
])
def test_bad_limits_name_the_option_and_the_value(name, value):
    with pytest.raises(ConfigError, match=rf"summarizer 'openai' option {name} .*got {value!r}"):
        SUMMARIZERS.create("openai", api_key_env="none", **{name: value})
    with pytest.raises(ConfigError, match=rf"captioner 'openai-vision' option {name} .*got {value!r}"):
        CAPTIONERS.create("openai-vision", api_key_env="none", base_url="http://127.0.0.1:9/v1", **{name: value})
