"""The Generator protocol and its registry.

A request is (prompt, seed); the same request always yields the same image, so reruns and caches
agree. A backend that will not or cannot render a prompt returns a refusal with the reason instead
of an image (an NSFW filter, an empty output, a phrase outside a synthetic world's vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from dnd.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: The paper's prompt template (section 3.3, A.1).
PROMPT_TEMPLATE = "One realistic image of {}"


@dataclass
class Generated:
    image: "Image.Image | None"
    refused: str | None = None


@runtime_checkable
class Generator(Protocol):
    cache_key: str

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Generated]:
        """One result per (prompt, seed) pair, same order."""
        ...


GENERATORS: Registry[Generator] = Registry("generator")
