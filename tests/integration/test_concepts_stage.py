"""Step 2B over many neurons with the real openai client against a stub server: sharing, caching,
and a failing endpoint that fails only the neurons whose requests it refuses."""

import pytest

from dnd.concepts.stage import run_concepts
from dnd.config import load_config
from dnd.records import Caption, NeuronRow
from dnd.store.layout import RunLayout
from tests.support.llm_stub import StubLLM


def rows_with(captions_per_neuron):
    return [
        NeuronRow("fc", n, captions=[Caption(f"{n}-{i}", c) for i, c in enumerate(captions)])
        for n, captions in enumerate(captions_per_neuron)
    ]


def config_for(tmp_path, url, **summarizer):
    return load_config({
        "target": {"model": "torchvision:resnet18"},
        "layers": ["fc"],
        "probe": {"sources": [{"uri": "gen://shapes"}]},
        "summarizer": {"backend": "openai", "candidates": 3,
                       "options": {"base_url": url, "model": "stub", "api_key_env": "none", "max_retries": 1,
                                   "backoff_s": 0.01, "timeout_s": 5}, **summarizer},
        "output": {"uri": str(tmp_path / "run")},
    })


def run(config, rows):
    from dnd.concepts.stage import build_summarizer

    layout = RunLayout(config.output.uri)
    return run_concepts(config, None, rows, layout, lambda m: None, summarizer=build_summarizer(config))


RED = ["a red car parked outside", "a red dress on a hanger", "a red apple on a table"]
DOGS = ["a dog running on grass", "a small dog asleep", "a dog with a ball"]


def test_candidates_follow_the_prompts_and_shared_captions_are_asked_once(tmp_path):
    with StubLLM() as llm:
        rows = rows_with([RED, RED, DOGS])
        counts = run(config_for(tmp_path, llm.url), rows)
        requests = llm.counts["ok"]
    # The stub answers a summary with the content word most descriptions share.
    assert {c.concept for c in rows[0].candidates} == {"red"}
    assert {c.concept for c in rows[2].candidates} == {"dog"}
    assert all(r.status == "ok" for r in rows)
    concepts = counts["concepts"]
    # 6 unique captions (neurons 0 and 1 share theirs) are simplified once each; every unique
    # shuffled list is summarized once, so at most 3 neurons x 3 orders requests.
    assert concepts["unique_captions"] == 6
    assert requests == concepts["unique_captions"] + concepts["unique_summaries"]
    assert concepts["unique_summaries"] <= 9


def test_failures_touch_only_the_neurons_that_needed_the_failing_calls(tmp_path):
    broken = ["a cat stub:500*2", "a cat on a sofa stub:500*2", "a cat in a box stub:500*2"]
    with StubLLM() as llm:
        rows = rows_with([RED, broken, DOGS])
        run(config_for(tmp_path, llm.url, simplify=False), rows)
        assert llm.counts["500"] >= 2
    assert rows[0].status == "ok" and rows[2].status == "ok"
    assert rows[1].status == "failed"
    assert "no candidate concept" in rows[1].error and "500" in rows[1].error


def test_rerun_asks_the_llm_nothing(tmp_path):
    with StubLLM() as llm:
        config = config_for(tmp_path, llm.url)
        run(config, rows_with([RED, DOGS]))
        first = llm.counts["ok"]
        again = rows_with([RED, DOGS])
        counts = run(config, again)
        assert llm.counts["ok"] == first
    assert counts["concepts"]["cache"]["misses"] == 0
    assert {c.concept for c in again[1].candidates} == {"dog"}


def test_empty_captions_fail_the_neuron_with_a_reason(tmp_path):
    with StubLLM() as llm:
        rows = rows_with([["", "   "], RED])
        run(config_for(tmp_path, llm.url), rows)
    assert rows[0].status == "failed" and "empty caption" in rows[0].error
    assert rows[1].status == "ok"


@pytest.mark.parametrize("mode", ["garbage", "malformed"])
def test_garbage_answers_fail_cleanly(tmp_path, mode):
    with StubLLM(mode=mode) as llm:
        rows = rows_with([RED])
        run(config_for(tmp_path, llm.url), rows)
    assert rows[0].status == "failed"
    assert rows[0].error.startswith("no candidate concept")


def test_a_ranking_summarizer_proposes_distinct_candidates_once_per_caption_list(tmp_path):
    # The offline extractive summarizer ranks phrases, so it is asked once per unique caption list
    # for N candidates instead of N times over shuffles, and a rerun is served from the cache.
    config = load_config({
        "target": {"model": "torchvision:resnet18"},
        "layers": ["fc"],
        "probe": {"sources": [{"uri": "gen://shapes"}]},
        "summarizer": {"backend": "extractive", "candidates": 3},
        "output": {"uri": str(tmp_path / "run")},
    })
    red_circles = ["a red circle", "a red circle", "a red striped circle", "a close up of a red surface"]
    rows = rows_with([red_circles, red_circles, DOGS])
    counts = run(config, rows)
    first = [[c.concept for c in r.candidates] for r in rows]
    assert set(first[0]) == {"red", "circle", "red circle"} and first[0] == first[1]
    assert len(first[0]) == len(set(first[0]))
    assert any("dog" in c for c in first[2])
    assert counts["concepts"]["unique_summaries"] == 2  # neurons 0 and 1 share their caption list
    again = rows_with([red_circles, red_circles, DOGS])
    counts = run(config, again)
    assert [[c.concept for c in r.candidates] for r in again] == first
    assert counts["concepts"]["cache"]["misses"] == 0
