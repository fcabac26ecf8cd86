"""A CLIP stand-in for the planted world: images and phrases in one attribute space.

An image is embedded as the area-weighted colours, shapes and textures its objects show, read from
the pixels by the world's captioner (never from metadata); a phrase as the attributes it names. So,
as with CLIP, "red" is close to pictures of red things and "red" is unlike "circle" (similarity 0),
while "red" and "red circle" share half their meaning (0.71) — which is what image products and
the multiple-label similarity threshold of A.7 need to behave meaningfully in `dnd demo`, where a
random-tiny CLIP would only add noise.
"""

from __future__ import annotations

import numpy as np

from dnd.errors import ConfigError
from dnd.selection.embedder import EMBEDDERS

EMBEDDER_VERSION = "2"


#: Phrases outside the vocabulary get one of these axes (by a stable hash), so they are unlike every
#: vocabulary phrase and every picture, yet still unit vectors; an image with no object gets "nothing".
_UNKNOWN_AXES = 8


def _axes() -> list[str]:
    from dnd.synthetic.world import COLORS, SHAPES, TEXTURES

    return list(COLORS) + list(SHAPES) + list(TEXTURES) + ["nothing"] + [f"unknown-{i}" for i in range(_UNKNOWN_AXES)]


def _unknown_axis(text: str) -> str:
    import hashlib

    return f"unknown-{hashlib.sha256(text.encode()).digest()[0] % _UNKNOWN_AXES}"


@EMBEDDERS.register("synthetic")
class SyntheticEmbedder:
    def __init__(self, device: str = "cpu"):
        # Pixel statistics need no accelerator; ``device`` is accepted like every embedder's.
        if not isinstance(device, str):
            raise ConfigError(f"device must be a string such as 'cpu', got {device!r}")
        self.axes = _axes()
        self.index = {name: i for i, name in enumerate(self.axes)}
        self.cache_key = f"synthetic-embed|v{EMBEDDER_VERSION}"

    def _unit(self, vector: np.ndarray) -> np.ndarray:
        norm = float(np.linalg.norm(vector))
        return (vector / norm).astype(np.float32) if norm > 0 else vector.astype(np.float32)

    def embed_images(self, images: list) -> np.ndarray:
        from dnd.synthetic.captioner import describe

        rows = []
        for image in images:
            vector = np.zeros(len(self.axes))
            objects, _ = describe(image)
            for seen in objects:
                weight = float(seen.area)
                for attribute in (seen.color, None if seen.fills_frame else seen.shape, seen.texture):
                    if attribute in self.index:
                        vector[self.index[attribute]] += weight
            if not vector.any():
                vector[self.index["nothing"]] = 1.0
            rows.append(self._unit(vector))
        return np.stack(rows) if rows else np.zeros((0, len(self.axes)), dtype=np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        from dnd.synthetic.world import ANY_STRIPES, STRIPE_TEXTURES, parse_phrase

        rows = []
        for text in texts:
            vector = np.zeros(len(self.axes))
            concept = parse_phrase(text)
            if concept is not None:
                for attribute in (concept.color, concept.shape):
                    if attribute in self.index:
                        vector[self.index[attribute]] = 1.0
                if concept.texture == ANY_STRIPES:
                    for stripes in STRIPE_TEXTURES:
                        vector[self.index[stripes]] = 1.0 / np.sqrt(len(STRIPE_TEXTURES))
                elif concept.texture in self.index:
                    vector[self.index[concept.texture]] = 1.0
            if not vector.any():
                vector[self.index[_unknown_axis(text)]] = 1.0
            rows.append(self._unit(vector))
        return np.stack(rows) if rows else np.zeros((0, len(self.axes)), dtype=np.float32)
