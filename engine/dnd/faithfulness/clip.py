"""Concept source ``clip``: a model's pseudo-labels (NeuronEval's "model-generated" concept vectors).

The soft concept vector of an explanation is the image-text cosine similarity of each probe image
under the run's embedder (CLIP, or whatever ``selection.embedder`` names), min-max scaled over the
probe to [0, 1]. Its binary reading, for AUPRC, F1 and IoU, is the images above the explanation's
Otsu threshold of those similarities (``binarise: otsu``), or at or above a fixed scaled value
(``binarise: 0.5``).
"""

from __future__ import annotations

import numpy as np

from dnd.errors import ConfigError
from dnd.faithfulness.embedding import embed_probe_images, embed_texts
from dnd.faithfulness.sources import CONCEPT_SOURCES, ConceptVectors, ProbeImages, ScoringContext, needs_embedder, otsu_threshold


@CONCEPT_SOURCES.register("clip")
class ClipSource:
    def __init__(self, binarise: str | float = "otsu"):
        if binarise != "otsu" and (isinstance(binarise, bool) or not isinstance(binarise, (int, float))
                                   or not 0 < binarise < 1):
            raise ConfigError(f"clip option binarise must be 'otsu' or a number in (0, 1), got {binarise!r}")
        self.binarise = binarise

    def check(self, config) -> None:
        needs_embedder(config, "concepts clip")

    def vectors(self, explanations: list[str], images: ProbeImages, context: ScoringContext) -> ConceptVectors:
        image_emb, unreadable = embed_probe_images(context, images)
        text_emb = embed_texts(context, explanations)
        similarity = text_emb @ image_emb.T  # (explanations, images)
        low = similarity.min(axis=1, keepdims=True)
        span = similarity.max(axis=1, keepdims=True) - low
        soft = np.where(span > 0, (similarity - low) / np.where(span > 0, span, 1), 0).astype(np.float32)
        if self.binarise == "otsu":
            cuts = np.array([otsu_threshold(row) for row in soft], dtype=np.float32)[:, None]
            present = soft > cuts
        else:
            present = soft >= float(self.binarise)
        present &= span > 0  # an explanation the embedder cannot tell apart across the probe is nowhere
        return ConceptVectors(soft, present, notes={"unreadable_images": unreadable, "binarise": self.binarise})
