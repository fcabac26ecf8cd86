"""Sends the chat completions of one OpenAI-compatible backend (the summarizer, the vision
captioner): the retry policy and key handling of :mod:`dnd.chat.compat`, async I/O on a loop of
the backend's own, and the adaptive request gate of :mod:`dnd.chat.gate`."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from dnd.chat.aimd import AIMD
from dnd.chat.budget import RequestBudget
from dnd.chat.compat import RetryPolicy, describe, make_client, retry_after_s, retryable, short
from dnd.chat.gate import RequestGate
from dnd.chat.limits import Limits
from dnd.chat.loop import LoopThread
from dnd.usage import Usage


@dataclass(frozen=True)
class Outcome:
    """One request after its retries: the response, or why there is none."""

    response: Any = None
    error: str | None = None
    attempts: int = 0


class ChatCaller:
    """Sends chat completions under one :class:`RetryPolicy` and one :class:`RequestGate`,
    counting requests, retries, tokens and throughput into ``usage``. Callable from any thread,
    including one whose own event loop is running; it never raises for a per-request problem.
    Pickles without its client, loop and gate (Ray may ship a backend to an actor), and rebuilds
    them there."""

    def __init__(self, api_key: str, base_url: str | None, timeout_s: float, policy: RetryPolicy, usage: Usage,
                 limits: Limits = Limits()):
        self.api_key = api_key
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.policy = policy
        self.usage = usage
        self.limits = limits
        self._setup()

    def _setup(self) -> None:
        self.lock = threading.Lock()
        self._client: Any = None
        # Jitter only spreads retries out; it never changes an answer, so it need not be seeded.
        self._rng = random.Random()
        self._loop = LoopThread("dnd-openai")
        self.gate = RequestGate(AIMD(self.limits.max_concurrency, self.limits.initial_concurrency),
                                RequestBudget(self.limits.requests_per_minute, self.limits.tokens_per_minute))
        self._active_batches = 0
        self._busy_since = 0.0
        self.busy_s = 0.0

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("lock", "_client", "_rng", "_loop", "gate", "_active_batches", "_busy_since", "busy_s"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup()

    def client(self) -> Any:
        """The ``AsyncOpenAI`` client (built on first use); its requests run on this caller's loop."""
        with self.lock:
            if self._client is None:
                self._client = make_client(self.api_key, self.base_url, self.timeout_s, self.limits.max_concurrency)
            return self._client

    def close(self) -> None:
        with self.lock:
            client, self._client = self._client, None
        self._loop.close(client.close() if client is not None else None)
        # The next call starts a new loop; the window learnt so far still applies to the endpoint.
        self.gate = RequestGate(self.gate.aimd, self.gate.budget)

    def count(self, **increments: int) -> None:
        with self.lock:
            for name, amount in increments.items():
                setattr(self.usage, name, getattr(self.usage, name) + amount)

    # -- sending -----------------------------------------------------------------------------
    def create_many(self, requests: list[dict]) -> list[Outcome]:
        """``chat.completions.create(**request)`` for each request, concurrently through the gate,
        each with the policy's retries; the outcomes in the order of ``requests``."""
        if not requests:
            return []
        return self._loop.run(self._many(requests))

    def create(self, **request: Any) -> Outcome:
        return self.create_many([request])[0]

    def send_once(self, **request: Any) -> Any:
        """One request with no retry and no gate, raising what the client raises (for checks)."""
        return self._loop.run(self.client().chat.completions.create(**request))

    async def _many(self, requests: list[dict]) -> list[Outcome]:
        # Busy time runs while any batch is in flight (batches from several threads overlap), so
        # that the request rate reported is the rate achieved while there was work.
        if self._active_batches == 0:
            self._busy_since = time.monotonic()
        self._active_batches += 1
        try:
            return list(await asyncio.gather(*(self._one(request) for request in requests)))
        finally:
            self._active_batches -= 1
            if self._active_batches == 0:
                self.busy_s += time.monotonic() - self._busy_since
            self._publish()

    async def _one(self, request: dict) -> Outcome:
        import openai

        last = ""
        for attempt in range(self.policy.max_retries + 1):
            self.count(requests=1, retries=1 if attempt else 0)
            try:
                response = await self._attempt(request)
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                last = describe(exc)
                if not retryable(exc):
                    return Outcome(error=last, attempts=attempt + 1)
                if attempt < self.policy.max_retries:
                    await asyncio.sleep(self.policy.delay(attempt, exc, self._rng))
                continue
            except (openai.OpenAIError, ValueError) as exc:  # a body the client cannot read: this request only
                return Outcome(error=f"malformed response from endpoint: {type(exc).__name__}: {short(str(exc))}",
                               attempts=attempt + 1)
            return Outcome(response=response, attempts=attempt + 1)
        attempts = self.policy.max_retries + 1
        return Outcome(error=f"gave up after {attempts} attempts: {last}", attempts=attempts)

    async def _attempt(self, request: dict) -> Any:
        """One HTTP request inside a slot of the gate; the gate hears how it went."""
        epoch = await self.gate.acquire()
        try:
            response = await self.client().chat.completions.create(**request)
        except BaseException as exc:  # cancellation included: the slot must come back
            hold = min(retry_after_s(exc), self.policy.backoff_cap_s)
            await self.gate.release(epoch, status=getattr(exc, "status_code", None), hold_s=hold)
            raise
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
        completion = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
        self.count(prompt_tokens=prompt, completion_tokens=completion)
        await self.gate.release(epoch, ok=True, tokens=prompt + completion)
        return response

    def _publish(self) -> None:
        """Throughput figures into ``usage.extra``, for ``_SUCCESS`` and the progress log."""
        with self.lock:
            rate = self.usage.requests / self.busy_s if self.busy_s > 0 else 0.0
            self.usage.extra.update({
                "requests_per_s": round(rate, 2),
                "rate_limited": self.gate.overloads,
                "peak_in_flight": self.gate.peak_in_flight,
                "concurrency": self.gate.aimd.limit,
            })
