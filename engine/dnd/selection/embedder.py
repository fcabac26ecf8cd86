"""The Embedder protocol (CLIP image and text embeddings) and its registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from dnd.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image


@runtime_checkable
class Embedder(Protocol):
    cache_key: str

    def embed_images(self, images: "list[Image.Image]") -> "np.ndarray":
        """(n, d) float32, rows L2-normalised."""
        ...

    def embed_texts(self, texts: list[str]) -> "np.ndarray":
        """(n, d) float32, rows L2-normalised."""
        ...


EMBEDDERS: Registry[Embedder] = Registry("embedder")
