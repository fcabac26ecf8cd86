"""The "openai" summarizer driving the real openai client against the stub server on loopback.

Expected answers follow the stub's documented rule (tests/support/llm_stub.py): simplify → the
caption's first three content words; summarize → the content word found in most descriptions,
ties to the first seen.
"""

import asyncio
import hashlib
import pickle
import threading
import time
from pathlib import Path

import pytest

import dnd.concepts.llm  # noqa: F401 - registers the backend
from dnd.concepts import prompts
from dnd.concepts.base import SUMMARIZERS, Answer, Summarizer
from dnd.errors import ConfigError
from tests.support.llm_stub import StubLLM


@pytest.fixture
def llm():
    with StubLLM(slow_s=3.0) as server:
        yield server


def make(server, **options):
    # Small timeouts and backoff keep retry tests fast; retries are what is being tested.
    settings = dict(base_url=server.url, api_key_env="none", timeout_s=2.0, backoff_s=0.01, max_retries=3)
    settings.update(options)
    return SUMMARIZERS.create("openai", **settings)


def test_deterministic_answers_and_request_shape(llm):
    summarizer = make(llm, model="stub-model")
    assert isinstance(summarizer, Summarizer)
    assert summarizer.simplify(["a red dress with silver studs", "A toy car sits on a red ottoman"]) == [
        Answer("red dress silver"),
        Answer("toy car sits"),
    ]
    # red and car both occur in two descriptions; red is listed first, so red wins. Reversed
    # order lists car first: the order of the captions matters, as it does for a real LLM.
    sets = [["red car", "red dress", "blue car"], ["blue car", "red dress", "red car"]]
    assert summarizer.summarize(sets) == [Answer("red"), Answer("car")]
    bodies = [r["body"] for r in llm.requests]
    assert {b["model"] for b in bodies} == {"stub-model"}
    assert {b["temperature"] for b in bodies} == {0.0}
    assert {b["max_tokens"] for b in bodies} == {32}
    summary_bodies = [b for b in bodies if len(b["messages"]) == 5]
    assert len(summary_bodies) == 2
    assert summary_bodies[0]["messages"][1] == {"role": "assistant", "content": "multicolored textiles"}
    assert summarizer.usage.requests == 4 and summarizer.usage.failures == 0


def test_repeated_captions_are_asked_once(llm):
    summarizer = make(llm)
    answers = summarizer.simplify(["a red car", "a blue car", "a red car"])
    assert [a.text for a in answers] == ["red car", "blue car", "red car"]
    assert len(llm.requests) == 2


def test_rate_limit_is_retried_and_retry_after_honoured():
    with StubLLM(retry_after=0.3) as server:
        summarizer = make(server)
        start = time.monotonic()
        [answer] = summarizer.simplify(["a red spool of cable stub:429*2"])
        elapsed = time.monotonic() - start
    assert answer == Answer("red spool cable")
    assert server.counts["429"] == 2 and server.counts["ok"] == 1
    assert summarizer.usage.retries == 2
    assert summarizer.usage.requests == 3
    assert summarizer.usage.failures == 0
    # Two waits of at least the server's Retry-After, although our own backoff is 10 ms.
    assert elapsed >= 0.6


def test_server_error_is_retried(llm):
    summarizer = make(llm)
    [answer] = summarizer.summarize([["a green leaf stub:500*1", "a green frog"]])
    assert answer == Answer("green")
    assert llm.counts["500"] == 1 and llm.counts["ok"] == 1
    assert summarizer.usage.retries == 1


def test_slow_answer_times_out_then_succeeds_on_retry(llm):
    summarizer = make(llm, timeout_s=0.3)
    [answer] = summarizer.simplify(["a striped zebra stub:slow*1"])
    assert answer == Answer("striped zebra")
    assert llm.counts["slow"] == 1 and summarizer.usage.retries == 1


def test_slow_answers_give_up_after_max_retries_without_raising(llm):
    summarizer = make(llm, timeout_s=0.3, max_retries=2)
    start = time.monotonic()
    [answer] = summarizer.simplify(["a striped zebra stub:slow"])
    elapsed = time.monotonic() - start
    assert answer.text is None and not answer.ok
    assert "gave up after 3 attempts" in answer.error and "Timeout" in answer.error
    assert llm.counts["slow"] == 3
    assert summarizer.usage.retries == 2 and summarizer.usage.failures == 1
    assert elapsed < 3.0  # three timeouts of 0.3 s, not the stub's 3 s sleep


def test_malformed_json_fails_the_item_without_retry(llm):
    llm.set_mode("malformed")
    summarizer = make(llm)
    [answer] = summarizer.simplify(["a red car"])
    assert answer.text is None and answer.error.startswith("malformed response")
    assert llm.counts["malformed"] == 1
    assert summarizer.usage.failures == 1 and summarizer.usage.retries == 0


def test_garbage_reply_is_an_unparseable_failure(llm):
    llm.set_mode("garbage")
    summarizer = make(llm)
    [answer] = summarizer.summarize([["a red car", "a red dress"]])
    assert answer == Answer(None, error="unparseable reply: '...'")
    assert summarizer.usage.extra["unparseable"] == 1
    assert summarizer.usage.failures == 1 and llm.counts["garbage"] == 1


@pytest.mark.parametrize("status", ["400", "401", "404"])
def test_client_errors_are_not_retried(llm, status):
    summarizer = make(llm)
    [answer] = summarizer.simplify([f"a red car stub:{status}"])
    assert answer.text is None and answer.error.startswith(f"HTTP {status}")
    assert llm.counts[status] == 1 and sum(llm.counts.values()) == 1
    assert summarizer.usage.retries == 0 and summarizer.usage.failures == 1


def test_a_failure_touches_only_its_own_item(llm):
    summarizer = make(llm)
    answers = summarizer.simplify(["a red car", "a blue boat stub:400", "a green tree"])
    assert answers[0] == Answer("red car") and answers[2] == Answer("green tree")
    assert answers[1].error.startswith("HTTP 400")


def test_concurrency_bound_is_respected():
    with StubLLM(delay_s=0.15) as server:
        summarizer = make(server, max_concurrency=3)
        captions = [f"picture number{i} of cats" for i in range(12)]
        start = time.monotonic()
        answers = summarizer.simplify(captions)
        elapsed = time.monotonic() - start
    assert [a.text for a in answers] == [f"picture number{i} cats" for i in range(12)]
    assert server.max_in_flight == 3
    assert elapsed >= 4 * 0.15  # 12 requests, 3 at a time


def test_usage_sums_the_responses_token_counts(llm):
    summarizer = make(llm)
    caption = "a red chevrolet camaro at a car show"
    summarizer.simplify([caption])
    # The stub counts whitespace-separated words: the paper's prompt, then the caption.
    assert summarizer.usage.prompt_tokens == len(prompts.SIMPLIFY_PROMPT.split()) + 8
    assert summarizer.usage.completion_tokens == 3  # "red chevrolet camaro"
    summarizer.summarize([["a red car", "a red dress"], ["blue sky", "blue sea"]])
    summarizer.simplify(["a yellow taxi stub:429*1"])  # the 429 carries no usage
    assert summarizer.usage.prompt_tokens == llm.prompt_tokens
    assert summarizer.usage.completion_tokens == llm.completion_tokens == 3 + 1 + 1 + 2
    assert summarizer.usage.as_dict()["requests"] == 5


def test_api_key_comes_from_the_named_variable(llm, monkeypatch):
    monkeypatch.delenv("DND_TEST_LLM_KEY", raising=False)
    with pytest.raises(ConfigError, match="DND_TEST_LLM_KEY"):
        make(llm, api_key_env="DND_TEST_LLM_KEY")
    monkeypatch.setenv("DND_TEST_LLM_KEY", "sk-test-123")
    make(llm, api_key_env="DND_TEST_LLM_KEY").simplify(["a red car"])
    make(llm, api_key_env="none").simplify(["a blue car"])
    assert [r["authorization"] for r in llm.requests] == ["Bearer sk-test-123", "Bearer not-needed"]
    assert "sk-test-123" not in repr(make(llm, api_key_env="DND_TEST_LLM_KEY"))


@pytest.mark.parametrize(
    "options, named",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_concurrency": "8"}, "max_concurrency"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_retries": -1}, "max_retries"),
        ({"base_url": "localhost:8000"}, "base_url"),
        ({"model": ""}, "model"),
        ({"api_key_env": 3}, "api_key_env"),
        ({"temprature": 0.5}, "temprature"),
    ],
)
def test_bad_options_are_config_errors(llm, options, named):
    with pytest.raises(ConfigError, match=named):
        make(llm, **options)


def test_cache_key_names_every_parameter_and_the_prompts(llm):
    summarizer = make(llm, model="m1", temperature=0.7, max_tokens=20)
    prompts_text = Path(prompts.__file__).read_text(encoding="utf-8")
    prompts_hash = hashlib.sha256(prompts_text.encode("utf-8")).hexdigest()[:16]
    key = summarizer.cache_key
    assert key.startswith("openai:model=m1|")
    assert f"base_url={llm.url}" in key
    assert "temperature=0.7" in key and "max_tokens=20" in key
    assert f"prompts={prompts_hash}" in key
    # Retry and concurrency settings do not change answers, so they stay out of the key.
    same = make(llm, model="m1", temperature=0.7, max_tokens=20, max_concurrency=2, max_retries=0)
    assert same.cache_key == key
    assert make(llm, model="m1", temperature=0.0, max_tokens=20).cache_key != key


def test_callable_from_threads_and_inside_a_running_event_loop(llm):
    summarizer = make(llm)
    results = {}

    def in_thread():
        results["thread"] = summarizer.simplify(["a red car", "a blue car"])

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(timeout=20)

    async def in_loop():
        # e.g. a notebook cell or an async Ray actor: a loop is running in this thread.
        return summarizer.summarize([["red car", "red dress"]])

    results["loop"] = asyncio.run(in_loop())
    assert [a.text for a in results["thread"]] == ["red car", "blue car"]
    assert results["loop"] == [Answer("red")]


def test_pickled_summarizer_still_works(llm):
    summarizer = make(llm)
    summarizer.simplify(["a red car"])  # builds the client, which must not be pickled
    clone = pickle.loads(pickle.dumps(summarizer))
    assert clone.simplify(["a green frog"]) == [Answer("green frog")]
    assert clone.cache_key == summarizer.cache_key
    assert clone.usage.requests == 2


def test_check_endpoint(llm):
    make(llm).check_endpoint()
    llm.set_mode("401")
    with pytest.raises(ConfigError, match="HTTP 401"):
        make(llm).check_endpoint()
    with pytest.raises(ConfigError, match="unreachable"):
        # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
        SUMMARIZERS.create("openai", base_url="http://127.0.0.1:9/v1", api_key_env="none").check_endpoint()


def test_called_from_ray_actors(llm, local_ray):
    ray = local_ray  # the session's local Ray (tests/integration/conftest.py)

    class Holder:
        def __init__(self, url):
            import dnd.concepts.llm  # noqa: F401 - registers the backend in the worker

            self.summarizer = SUMMARIZERS.create("openai", base_url=url, api_key_env="none", timeout_s=5.0)

    @ray.remote(num_cpus=0)
    class SyncActor(Holder):
        def run(self, captions):
            return [a.text for a in self.summarizer.simplify(captions)]

    @ray.remote(num_cpus=0)
    class AsyncActor(Holder):
        async def run(self, captions):  # an event loop is running while the sync call happens
            return [a.text for a in self.summarizer.simplify(captions)]

    sync_actor, async_actor = SyncActor.remote(llm.url), AsyncActor.remote(llm.url)
    assert ray.get(sync_actor.run.remote(["a red car", "a blue boat"]), timeout=120) == ["red car", "blue boat"]
    assert ray.get(async_actor.run.remote(["a green frog"]), timeout=120) == ["green frog"]
    for actor in (sync_actor, async_actor):
        ray.kill(actor)
