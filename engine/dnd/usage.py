"""Request and token counts of a backend that calls a service (an LLM, a vision model), reported
in ``_SUCCESS``. Shared by Step 2A's and Step 2B's backends, so neither step imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Usage:
    """Token and request counts: ``requests`` counts HTTP requests sent (first attempts and
    retries), ``retries`` the retries among them, ``failures`` the inputs whose answer failed;
    ``extra`` holds a backend's own counts."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "retries": self.retries,
            "failures": self.failures,
            **self.extra,
        }
