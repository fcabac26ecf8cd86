"""The Captioner protocol and its registry.

Backends take a batch of RGB PIL images and return one caption per image, in order. They hold no
Ray Data types so the same class serves the pipeline's actor pool and a Ray Serve deployment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from dnd.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


@runtime_checkable
class Captioner(Protocol):
    #: Identifies the model and every parameter that changes its output; part of cache keys.
    cache_key: str

    def caption(self, images: "list[Image.Image]") -> list[str]:
        """One caption per image, same order; an image the model cannot describe gives ""."""
        ...


CAPTIONERS: Registry[Captioner] = Registry("captioner")
