"""A stub OpenAI-compatible chat server on loopback, for tests and manual runs (stdlib only).

Start it from a test::

    with StubLLM() as llm:                       # ephemeral port on 127.0.0.1
        summarizer = SUMMARIZERS.create("openai", base_url=llm.url, api_key_env="none")
        ...
        assert llm.counts["429"] == 2

or by hand: ``python -m tests.support.llm_stub --port 8089 [--mode 429] [--delay 0.1]``, then
point a run at ``http://127.0.0.1:8089/v1``.

Endpoints:

* ``POST /v1/chat/completions`` (also ``/chat/completions``): answers the last user message.
* ``GET /v1/models``: one model, ``stub``.
* ``POST /stub/mode`` with ``{"mode": "429", "times": 2}``: server-wide mode (``times`` = for
  how many requests, null = until changed); ``GET /stub/stats``; ``POST /stub/reset``.

Answer rule (deterministic, so tests can predict it). *Content words* are the lowercase runs of
letters, digits and inner hyphens, at least two characters long, not in :data:`STOPWORDS` and not
a ``stub:`` tag.

* Simplify prompt (contains "simplifies the following description"): the first three content
  words of the caption after the prompt, joined by spaces. "a red dress with silver studs" →
  "red dress silver".
* Summarize prompt (contains "conceptual similarities in the following descriptions"): over the
  description lines after the prompt (one per line, an optional "- "/"• " bullet and quotes
  removed), the content word found in the most descriptions; ties go to the word that appears
  first in the listed order. Only the last user message counts, so few-shot turns do not.
* Anything else: the first three content words of the last user message.

Usage: ``prompt_tokens`` = whitespace-separated words over all message contents,
``completion_tokens`` = words in the answer.

Modes (server-wide via ``mode=``/``set_mode``/``POST /stub/mode``, or per request with a tag
``stub:MODE`` or ``stub:MODE*N`` anywhere in the last user message; a tag with ``*N`` applies to
the first N requests carrying that exact message, then the request is answered normally):

* ``ok``: the answer above. ``slow``: sleeps ``slow_s`` first (longer than a test client's
  timeout), then answers. ``garbage``: answers "..." (a reply with no label).
* ``429``: rate limited, with ``Retry-After: <retry_after>``. ``500``, ``503``: server errors.
  ``400``, ``401``, ``404``: client errors. ``malformed``: HTTP 200 with truncated JSON.

Rate limit (``rate_limit=R`` requests per second, or ``--rate-limit R``): a request that finds R
requests accepted in the last second is answered 429 at once, without the delay, as hosted
endpoints answer, with ``retry-after-ms`` (and ``retry-after``, whole seconds rounded up) saying
when the oldest of them leaves that second. Rejected requests do not count against the limit.

``counts`` counts requests per mode actually served (a rate-limit rejection counts as "429"); ``max_in_flight`` is the most requests that
were being handled at once; ``requests`` logs each chat request as ``{"mode", "body", "authorization", "t"}`` (``t``: when it
arrived, on ``time.monotonic``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STOPWORDS = frozenset(
    "a an the of in on at to for by with from and or but is are was were be been it its this "
    "that these those there some very into onto over under near next up down out off as".split()
)
MODES = ("ok", "slow", "garbage", "429", "500", "503", "400", "401", "404", "malformed")
SIMPLIFY_MARK = "simplifies the following description"
SUMMARIZE_MARK = "conceptual similarities in the following descriptions"
GARBAGE_REPLY = "..."
MALFORMED_BODY = b'{"id": "chatcmpl-stub", "object": "chat.completion", "choices": [{"message": {"con'

_TAG = re.compile(r"stub:([a-z0-9]+)(?:\*(\d+))?")
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_ERROR_TYPES = {
    "400": "invalid_request_error",
    "401": "authentication_error",
    "404": "not_found_error",
    "429": "rate_limit_error",
    "500": "server_error",
    "503": "server_error",
}


def content_words(text: str) -> list[str]:
    """The content words of ``text``, in order (see the module docstring)."""
    text = _TAG.sub(" ", text.lower())
    return [w for w in _WORD.findall(text) if len(w) >= 2 and w not in STOPWORDS]


def simplify_answer(caption: str) -> str:
    return " ".join(content_words(caption)[:3])


def summarize_answer(descriptions: list[str]) -> str:
    in_descriptions: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for description in descriptions:
        for word in dict.fromkeys(content_words(description)):
            in_descriptions[word] += 1
            first_seen.setdefault(word, len(first_seen))
    if not in_descriptions:
        return ""
    return min(in_descriptions, key=lambda w: (-in_descriptions[w], first_seen[w]))


def answer_for(content: str) -> str:
    """The stub's reply to one user message (the rule in the module docstring)."""
    if SUMMARIZE_MARK in content:
        body = content.split(SUMMARIZE_MARK, 1)[1].split("\n")[1:]
        descriptions = []
        for line in body:
            line = line.strip()
            for bullet in ("- ", "• "):
                if line.startswith(bullet):
                    line = line[len(bullet):]
            line = line.strip().strip('"')
            if line:
                descriptions.append(line)
        return summarize_answer(descriptions)
    if SIMPLIFY_MARK in content:
        caption = content.split(SIMPLIFY_MARK, 1)[1]
        caption = caption.split(":", 1)[1] if ":" in caption else caption
        return simplify_answer(caption)
    return simplify_answer(content)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections when a client opens dozens at once (an adaptive
    # client's window growing), and a dropped SYN costs a second: the stub would look slow.
    request_queue_size = 256


class StubLLM:
    """The server and its counters; runs in a daemon thread between ``start`` and ``stop``."""

    def __init__(
        self,
        *,
        mode: str = "ok",
        times: int | None = None,
        delay_s: float = 0.0,
        slow_s: float = 3.0,
        retry_after: float = 0.0,
        rate_limit: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.delay_s = delay_s
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.rate_limit = rate_limit
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.stub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        self.reset()
        self.set_mode(mode, times)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The ``base_url`` for an OpenAI client."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "StubLLM":
        self._thread = threading.Thread(
            # A short poll keeps ``stop`` (and so each test's teardown) fast.
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="llm-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in "slow" mode
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "StubLLM":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- control -----------------------------------------------------------------------------
    def set_mode(self, mode: str, times: int | None = None) -> None:
        """Serve ``mode`` for the next ``times`` requests (None: until changed), then "ok"."""
        if mode not in MODES:
            raise ValueError(f"unknown stub mode {mode!r}; expected one of {MODES}")
        with self._lock:
            self._mode, self._mode_left = mode, times

    def reset(self) -> None:
        with self._lock:
            self.counts: Counter[str] = Counter()
            self.requests: list[dict] = []
            self.in_flight = 0
            self.max_in_flight = 0
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self._tag_uses: Counter[tuple[str, str]] = Counter()
            self._accepted: deque[float] = deque()  # arrival times of requests the rate limit let in

    def stats(self) -> dict:
        with self._lock:
            return {
                "counts": dict(self.counts),
                "requests": len(self.requests),
                "max_in_flight": self.max_in_flight,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }

    # -- request handling --------------------------------------------------------------------
    def _choose_mode(self, content: str) -> str:
        with self._lock:
            tag = _TAG.search(content)
            if tag and tag.group(1) in MODES:
                limit = tag.group(2)
                key = (tag.group(0), content)
                self._tag_uses[key] += 1
                if limit is None or self._tag_uses[key] <= int(limit):
                    return tag.group(1)
                return "ok"
            if self._mode_left is None:
                return self._mode
            if self._mode_left > 0:
                self._mode_left -= 1
                return self._mode
            return "ok"

    def _over_rate(self, now: float) -> float | None:
        """None if the rate limit lets a request in at ``now`` (and counts it); else the seconds
        until the oldest accepted request leaves the one-second window."""
        if self.rate_limit is None:
            return None
        with self._lock:
            while self._accepted and self._accepted[0] <= now - 1.0:
                self._accepted.popleft()
            if len(self._accepted) < self.rate_limit:
                self._accepted.append(now)
                return None
            return self._accepted[0] + 1.0 - now

    def _enter(self, body: dict, mode: str, authorization: str | None) -> None:
        with self._lock:
            self.counts[mode] += 1
            self.requests.append({"mode": mode, "body": body, "authorization": authorization, "t": time.monotonic()})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _completion(self, body: dict, answer: str) -> dict:
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        completion_tokens = len(answer.split())
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            number = len(self.requests)
        return {
            "id": f"chatcmpl-stub-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do; every reply sets a length
    server_version = "llm-stub/1"

    @property
    def stub(self) -> StubLLM:
        return self.server.stub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        pass  # tests read counters, not access logs

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); nothing to tell it

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind = _ERROR_TYPES.get(str(status), "error")
        self._send(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})
        elif self.path.rstrip("/") == "/stub/stats":
            self._send(200, self.stub.stats())
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.rstrip("/")
        try:
            body = self._read_json()
        except (ValueError, UnicodeDecodeError):
            self._error(400, "request body is not JSON")
            return
        if path == "/stub/mode":
            try:
                self.stub.set_mode(body.get("mode", "ok"), body.get("times"))
            except (AttributeError, ValueError) as exc:
                self._error(400, str(exc))
                return
            self._send(200, {"mode": body.get("mode", "ok")})
        elif path == "/stub/reset":
            self.stub.reset()
            self._send(200, {"reset": True})
        elif path in ("/v1/chat/completions", "/chat/completions"):
            self._chat(body)
        else:
            self._error(404, f"no route {self.path}")

    def _chat(self, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._error(400, "expected a JSON object with a 'messages' list")
            return
        user_turns = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        content = str(user_turns[-1].get("content", "")) if user_turns else ""
        stub = self.stub
        mode = stub._choose_mode(content)
        wait = stub._over_rate(time.monotonic())
        if wait is not None:
            self._rate_limited(body, wait)
            return
        stub._enter(body, mode, self.headers.get("Authorization"))
        try:
            if stub.delay_s:
                stub._stopping.wait(stub.delay_s)
            if mode == "slow":
                stub._stopping.wait(stub.slow_s)
            if mode in ("ok", "slow"):
                self._send(200, stub._completion(body, answer_for(content)))
            elif mode == "garbage":
                self._send(200, stub._completion(body, GARBAGE_REPLY))
            elif mode == "malformed":
                self._send(200, MALFORMED_BODY)
            elif mode == "429":
                self._error(429, "rate limited (stub)", {"Retry-After": f"{stub.retry_after:g}"})
            else:
                self._error(int(mode), f"stub mode {mode}")
        finally:
            stub._leave()


    def _rate_limited(self, body: dict, wait_s: float) -> None:
        self.stub._enter(body, "429", self.headers.get("Authorization"))
        try:
            headers = {"retry-after-ms": f"{wait_s * 1000:.0f}", "Retry-After": str(math.ceil(wait_s))}
            self._error(429, "rate limit reached (stub)", headers)
        finally:
            self.stub._leave()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stub OpenAI-compatible chat server (dnd tests).")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mode", default="ok", choices=MODES)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--slow", type=float, default=3.0, help="seconds a 'slow' request sleeps")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of a 429")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second before 429s")
    args = parser.parse_args(argv)
    stub = StubLLM(
        mode=args.mode, delay_s=args.delay, slow_s=args.slow, retry_after=args.retry_after,
        rate_limit=args.rate_limit, host=args.host, port=args.port,
    )
    print(f"llm stub serving on http://{args.host}:{stub.port}/v1 (mode {args.mode})", flush=True)
    try:
        stub._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stub._httpd.server_close()


if __name__ == "__main__":
    main()
