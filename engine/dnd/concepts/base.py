"""The Summarizer protocol and its registry.

Step 2B has two calls (paper A.1.3): ``simplify`` turns one caption into a short concept label;
``summarize`` turns one neuron's (shuffled) list of simplified captions into one candidate concept.
Each returns one :class:`Answer` per input, so a failure touches only the neurons that needed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from dnd.registry import Registry
from dnd.usage import Usage

__all__ = ["Answer", "SUMMARIZERS", "Summarizer", "Usage"]


@dataclass(frozen=True)
class Answer:
    """The outcome of one summarizer call: ``text`` on success, else ``error`` says why."""

    text: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None and self.error is None


@runtime_checkable
class Summarizer(Protocol):
    cache_key: str
    usage: Usage

    def simplify(self, captions: list[str]) -> list[Answer]:
        """One simplified concept label per caption (prompt 1 of A.1.3)."""
        ...

    def summarize(self, caption_sets: list[list[str]]) -> list[Answer]:
        """One candidate concept per caption list (prompt 2 of A.1.3, with its few-shot examples)."""
        ...


SUMMARIZERS: Registry[Summarizer] = Registry("summarizer")
