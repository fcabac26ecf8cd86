"""Step 2B's request throughput against rate-limited OpenAI-compatible endpoints (loopback stubs).

Drives the real ``openai`` summarizer (``simplify`` in the chunks Step 2B sends, so through the
adaptive gate of ``dnd.chat.caller``) against ``tests/support/llm_stub.py`` with
300 ms per answer:

* ``high``: the stub answers 429 above 100 requests/s. The adaptive client (default options) and a
  fixed concurrency of 8 (``max_concurrency = initial_concurrency = 8``, the old default) send the
  same kind of work; reported: each one's answers/s, adaptive/limit (target >= 0.85), adaptive/fixed
  8 (target >= 5, although at most 100 / (8 / 0.3) = 3.75 is possible), failed answers (target 0).
  A fixed concurrency of 30 (= limit x latency, the best fixed choice had one known the limit) shows
  what this machine can reach at all: the client's and stub's own overhead lengthen each request.
* ``low``: the stub allows 5 requests/s; reported: answers/s, failed answers (target 0) and the
  share of requests answered 429 (target <= 0.10).

The stub runs in a process of its own, as an endpoint would: in the benchmark's process its
handler threads would share the client's interpreter lock and slow the client being measured.
Prints one JSON line; bounded by the request counts below and a timeout on every wait (about
2 minutes in all on 2 CPUs).
Run: ``python benchmarks/llm_throughput.py [--high-requests 3000] [--low-requests 150]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "engine"))

import dnd.concepts.llm  # noqa: E402,F401 - registers the backend
from dnd.concepts.base import SUMMARIZERS  # noqa: E402
from dnd.concepts.stage import chunk_size  # noqa: E402

LATENCY_S = 0.3


@contextlib.contextmanager
def stub_process(rate_limit: float) -> Iterator[str]:
    """``tests/support/llm_stub.py`` on an ephemeral loopback port; yields its base URL."""
    command = [sys.executable, "-m", "tests.support.llm_stub", "--host", "127.0.0.1", "--port", "0",
               "--delay", str(LATENCY_S), "--rate-limit", str(rate_limit)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # "llm stub serving on http://127.0.0.1:PORT/v1 (mode ok)"
        if "serving on " not in line:
            raise RuntimeError(f"the stub did not start: {line!r}")
        yield line.split("serving on ", 1)[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=10)


def stub_stats(url: str) -> dict:
    with urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/stub/stats", timeout=10) as response:
        return json.load(response)


def drive(rate_limit: float, requests: int, **options) -> dict:
    """``requests`` distinct captions simplified through a fresh summarizer against a fresh stub."""
    captions = [f"a photo of item{i} on a table" for i in range(requests)]
    with stub_process(rate_limit) as url:
        summarizer = SUMMARIZERS.create("openai", base_url=url, api_key_env="none", timeout_s=10.0, **options)
        start = time.monotonic()
        answers = []
        step = chunk_size(summarizer)
        for first in range(0, len(captions), step):
            answers += summarizer.simplify(captions[first:first + step])
        elapsed = time.monotonic() - start
        summarizer.close()
        stats = stub_stats(url)
    sent = sum(stats["counts"].values())
    rejected = stats["counts"].get("429", 0)
    peak = stats["max_in_flight"]
    usage = summarizer.usage.as_dict()
    ok = sum(answer.ok for answer in answers)
    return {
        "answers_per_s": round(ok / elapsed, 2),
        "seconds": round(elapsed, 1),
        "answers": ok,
        "failed": len(answers) - ok,
        "requests": sent,
        "answered_429": rejected,
        "share_429": round(rejected / sent, 3) if sent else 0.0,
        "peak_in_flight": peak,
        "final_concurrency": usage.get("concurrency"),
        "tokens": usage["prompt_tokens"] + usage["completion_tokens"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--high-requests", type=int, default=3000)
    parser.add_argument("--fixed-requests", type=int, default=400)
    parser.add_argument("--best-requests", type=int, default=1500)
    parser.add_argument("--low-requests", type=int, default=150)
    args = parser.parse_args()
    adaptive = drive(100, args.high_requests)
    print(f"adaptive at 100/s: {adaptive}", file=sys.stderr)
    fixed = drive(100, args.fixed_requests, max_concurrency=8, initial_concurrency=8)
    print(f"fixed 8 at 100/s: {fixed}", file=sys.stderr)
    best = drive(100, args.best_requests, max_concurrency=30, initial_concurrency=30)
    print(f"fixed 30 at 100/s: {best}", file=sys.stderr)
    low = drive(5, args.low_requests)
    print(f"adaptive at 5/s: {low}", file=sys.stderr)
    print(json.dumps({
        "latency_s": LATENCY_S,
        "high": {
            "limit_per_s": 100,
            "ratio_to_limit": round(adaptive["answers_per_s"] / 100, 3),
            "ratio_to_fixed_8": round(adaptive["answers_per_s"] / fixed["answers_per_s"], 2),
            "ratio_to_fixed_30": round(adaptive["answers_per_s"] / best["answers_per_s"], 3),
            "adaptive": adaptive,
            "fixed_8": fixed,
            "fixed_30": best,
        },
        "low": {"limit_per_s": 5, **low},
    }))


if __name__ == "__main__":
    main()
