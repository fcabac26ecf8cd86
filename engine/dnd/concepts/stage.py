"""Step 2B: candidate concepts for every neuron, sharing work across neurons.

Each unique caption is simplified once (prompt 1 of A.1.3); each neuron then gets N summaries over
seeded shuffles of its simplified captions (prompt 2), and identical caption lists — neurons with the
same top images — are summarized once. Answers are cached by content, so reruns ask nothing again.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Callable

from dnd.records import Candidate, NeuronRow, answer_schema
from dnd.store.cache import ContentCache, content_key

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.records import Step1Result
    from dnd.store.layout import RunLayout

#: LLM calls are sent, and cached, in chunks, so a crash loses at most one chunk of answers.
CHUNK = 256
#: ... of at least this many windows of the backend's concurrency ceiling: a chunk ends with a round
#: trip whose window empties out, which at 256 answers and 128 in flight would be a third of the time.
WINDOWS_PER_CHUNK = 8


def build_summarizer(config: RunConfig) -> Any:
    from dnd.backends import load_backends
    from dnd.concepts.base import SUMMARIZERS

    load_backends()
    return SUMMARIZERS.create(config.summarizer.backend, **config.summarizer.options)


def chunk_size(summarizer: Any) -> int:
    """Answers per chunk for ``summarizer``: :data:`CHUNK`, or more for a wide concurrent one."""
    limits = getattr(summarizer, "limits", None)
    return max(CHUNK, WINDOWS_PER_CHUNK * getattr(limits, "max_concurrency", 0))


def _ask(inputs: dict[str, Any], call: Callable[[list[Any]], list[Any]], cache: ContentCache,
         chunk_size: int = CHUNK) -> dict[str, Any]:
    """Answers for ``inputs`` (cache key -> input): cached ones first, the rest asked in chunks.
    Only successful answers are cached, so a failed call is retried by the next run."""
    from dnd.concepts.base import Answer

    cached = cache.lookup(inputs.keys())
    answers = {key: Answer(row["text"], None) for key, row in cached.items()}
    todo = [key for key in inputs if key not in answers]
    with cache.writer() as writer:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            replies = call([inputs[key] for key in chunk])
            for key, reply in zip(chunk, replies):
                answers[key] = reply
                if reply.ok:
                    writer.add({"key": key, "text": reply.text, "error": None})
            writer.flush()
    return answers


def _list_key(summarizer: Any, order: list[str], proposals: int | None) -> str:
    if proposals is None:
        return content_key("summarize", summarizer.cache_key, *order)
    return content_key("propose", summarizer.cache_key, str(proposals), *order)


def _proposals(summarizer: Any, caption_sets: list[list[str]], n: int) -> list[Any]:
    """``propose``'s candidate lists as one cacheable answer each (their JSON), failing only when
    no candidate came back."""
    from dnd.concepts.base import Answer

    replies = []
    for answers in summarizer.propose(caption_sets, n):
        texts = [a.text for a in answers if a.ok]
        errors = [a.error for a in answers if not a.ok]
        replies.append(Answer(json.dumps(texts)) if texts else Answer(None, error=errors[0] if errors else "no candidate"))
    return replies


def _traffic(usage: dict) -> str:
    """The summarizer's requests, rate and tokens for the progress line ("" for one that sends none)."""
    if not usage.get("requests"):
        return ""
    tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    line = f"; {usage['requests']} requests, {tokens} tokens"
    if "requests_per_s" in usage:
        line += (f", {usage['requests_per_s']:g} requests/s, {usage.get('rate_limited', 0)} rate-limited, "
                 f"up to {usage.get('peak_in_flight', 0)} in flight")
    return line


def run_concepts(config: RunConfig, step1: Step1Result, rows: list[NeuronRow], layout: RunLayout, log: Callable[[str], None],
                 summarizer: Any = None) -> dict:
    from dnd.concepts.shuffles import summary_orders

    started = time.time()
    summarizer = summarizer or build_summarizer(config)
    cache = ContentCache(layout.cache, "concepts", answer_schema(), config.output.storage_options)
    n = config.summarizer.candidates

    # 1. simplify each unique caption once
    captions = sorted({c.caption for row in rows for c in row.captions if c.caption.strip()})
    simplified: dict[str, str] = {c: c for c in captions}
    simplify_failures = 0
    if config.summarizer.simplify and captions:
        inputs = {content_key("simplify", summarizer.cache_key, c): c for c in captions}
        answers = _ask(inputs, summarizer.simplify, cache, chunk_size(summarizer))
        for key, caption in inputs.items():
            answer = answers[key]
            if answer.ok:
                simplified[caption] = answer.text
            else:
                simplify_failures += 1  # the raw caption still carries the information
    log(f"step 2B: {len(captions)} unique captions simplified")

    # 2. N candidates per neuron; identical caption lists are summarized once. An LLM is asked N
    # times over seeded shuffles (its answers differ with the order); a summarizer that ranks phrases
    # (``propose``) gives N distinct candidates in one call instead.
    proposes = callable(getattr(summarizer, "propose", None))
    per_neuron: list[list[list[str]]] = []
    lists: dict[str, list[str]] = {}
    for row in rows:
        texts = [simplified[c.caption] for c in row.captions if c.caption.strip()]
        if not texts:
            per_neuron.append([])
            continue
        orders = [texts] if proposes else summary_orders(texts, n, config.seed, f"{row.layer}/{row.neuron}")
        per_neuron.append(orders)
        for order in orders:
            lists.setdefault(_list_key(summarizer, order, n if proposes else None), order)
    answers = _ask(lists, (lambda sets: _proposals(summarizer, sets, n)) if proposes else summarizer.summarize, cache,
                   chunk_size(summarizer))
    failed = 0
    for row, orders in zip(rows, per_neuron):
        if row.status != "ok":
            continue
        if not orders:
            row.fail("no caption: every top image got an empty caption")
            failed += 1
            continue
        candidates, errors = [], []
        for order in orders:
            answer = answers[_list_key(summarizer, order, n if proposes else None)]
            if not answer.ok:
                errors.append(answer.error or "no answer")
            elif proposes:
                candidates.extend(json.loads(answer.text))
            else:
                candidates.append(answer.text)
        row.candidates = [Candidate(c) for c in candidates]
        if not candidates:
            row.fail(f"no candidate concept: {errors[0] if errors else 'the summarizer gave no answer'}")
            failed += 1
        elif errors:
            row.error = f"warning: {len(errors)} of {len(orders)} summaries failed ({errors[0]})"
    usage = summarizer.usage.as_dict() if getattr(summarizer, "usage", None) is not None else {}
    log(f"step 2B: {len(lists)} unique caption lists summarized in {time.time() - started:.1f}s; {failed} neurons without candidates"
        + _traffic(usage))
    return {
        "concepts": {
            "unique_captions": len(captions),
            "simplify_failures": simplify_failures,
            "unique_summaries": len(lists),
            "neurons_without_candidates": failed,
            "cache": cache.stats.as_dict(),
            "usage": usage,
        }
    }
