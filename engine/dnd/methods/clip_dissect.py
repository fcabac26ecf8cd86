"""``method: clip-dissect``: each neuron labelled by the concept of a fixed set S whose CLIP
similarity to its most activating probe images is highest under soft-WPMI (Oikarinen & Weng,
ICLR 2023), on the same Step 1 as the paper's method: no captioning, no LLM, no generation.

Only the images in some neuron's top-k enter soft-WPMI, so only those are embedded (through the
run's embedding cache), however large the probing set. Candidates are the best ``candidates``
concepts by soft-WPMI; multiple labels follow the paper's A.7 rule on their text similarity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dnd.errors import ConfigError, DndError
from dnd.records import Candidate, NeuronRow

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.records import Step1Result
    from dnd.store.layout import RunLayout


def check(config: RunConfig) -> list[str]:
    """On the driver, before any Ray work: the concept set loads and an embedder is configured.
    Returns the concept set."""
    from dnd.methods.concept_sets import load_concept_set
    from dnd.registry import check_options
    from dnd.selection.embedder import EMBEDDERS

    if config.selection.embedder is None:
        raise ConfigError("method clip-dissect needs an image-text embedder (selection.embedder, CLIP by default); it is null")
    check_options(EMBEDDERS, config.selection.embedder, "selection.embedder")
    return load_concept_set(config.clip_dissect.concept_set)


@dataclass
class LayerScores:
    """soft-WPMI of every concept for every kept neuron of one layer: ``scores[position[neuron]]``."""

    position: dict[int, int]
    scores: np.ndarray


def soft_wpmi_scores(config: RunConfig, layout: RunLayout, log: Callable[[str], None],
                     concepts: list[str]) -> tuple[dict[str, LayerScores], np.ndarray, dict[str, Any]]:
    """Per layer, soft-WPMI of ``concepts`` for every neuron Step 1 kept; the concepts' text
    embeddings; and the counts for ``_SUCCESS``."""
    from dnd.faithfulness.embedding import embed_probe_images, embed_texts
    from dnd.faithfulness.sources import ProbeImages, ScoringContext
    from dnd.methods.soft_wpmi import soft_wpmi
    from dnd.store.activations import read_activations

    settings = config.clip_dissect
    kept = read_activations(layout.step1)
    if kept is None:
        raise DndError("CLIP-Dissect needs Step 1's kept activations, and activations/ is missing; rerun the run")
    matrices = {layer: kept.matrix(layer) for layer in kept.layers}
    # The images some neuron's soft-WPMI looks at: each neuron's top-k.
    k = min(settings.top_k, len(kept.image_ids))
    wanted = np.unique(np.concatenate([np.argsort(-m, axis=1, kind="stable")[:, :k].ravel() for m in matrices.values()]))
    images = ProbeImages([kept.image_ids[i] for i in wanted], [kept.refs[i] for i in wanted],
                         [kept.sources[i] for i in wanted])
    context = ScoringContext(config, layout, log)
    log(f"clip-dissect: {len(concepts)} concepts x {len(wanted)} top images of {len(kept.image_ids)} probe images")
    tally: dict[str, int] = {}  # the embedder's cache hits and calls, for _SUCCESS's model_calls
    image_emb, unreadable = embed_probe_images(context, images, "clip-dissect: top images", tally)
    text_emb = embed_texts(context, concepts, "clip-dissect: concepts", tally)
    similarity = image_emb @ text_emb.T  # (top images, concepts)
    out = {}
    for layer, matrix in matrices.items():
        # log p(t) averages over the layer's described neurons, as the method defines it per layer.
        out[layer] = LayerScores({neuron: j for j, neuron in enumerate(kept.layers[layer])},
                                 soft_wpmi(matrix[:, wanted], similarity, top_k=settings.top_k, a=settings.a,
                                           lam=settings.lam, p_start=settings.p_start, p_end=settings.p_end))
    counts = {"concept_set": settings.concept_set, "concepts": len(concepts), "top_images_embedded": len(wanted),
              "unreadable_images": unreadable, "cache": tally}
    return out, text_emb, counts


def run_clip_dissect(config: RunConfig, step1: Step1Result, rows: list[NeuronRow], layout: RunLayout,
                     log: Callable[[str], None], concepts: list[str]) -> dict[str, Any]:
    """method clip-dissect: label every ok neuron of ``rows`` (filled in place); returns the counts."""
    started = time.time()
    by_layer, text_emb, counts = soft_wpmi_scores(config, layout, log, concepts)
    for row in rows:
        if row.status == "ok":
            layer = by_layer[row.layer]
            _label(config, row, layer.scores[layer.position[row.neuron]], concepts, text_emb)
    counts["seconds"] = round(time.time() - started, 3)
    log(f"clip-dissect: {len(rows)} neurons labelled in {counts['seconds']:.1f}s")
    return {"clip_dissect": counts}


def add_candidates(config: RunConfig, step1: Step1Result, rows: list[NeuronRow], layout: RunLayout,
                   log: Callable[[str], None], concepts: list[str]) -> dict[str, Any]:
    """``candidates.clip_dissect_top``: each neuron with candidates from Step 2 also gets CLIP-Dissect's
    best N concepts it does not have yet, after them, for Step 3's generative check to weigh."""
    from dnd.selection.dedupe import concept_key

    started = time.time()
    by_layer, _, counts = soft_wpmi_scores(config, layout, log, concepts)
    added = 0
    for row in rows:
        if row.status != "ok" or not row.candidates:
            continue
        layer = by_layer[row.layer]
        scores = layer.scores[layer.position[row.neuron]]
        have = {concept_key(c.concept) for c in row.candidates}
        # Its best N concepts; one the summaries already proposed is not listed twice.
        for i in np.argsort(-scores, kind="stable")[: config.candidates.clip_dissect_top]:
            if concept_key(concepts[i]) not in have:
                have.add(concept_key(concepts[i]))
                row.candidates.append(Candidate(concepts[i]))
                added += 1
    counts.update(added=added, seconds=round(time.time() - started, 3))
    return {"clip_dissect_candidates": counts}


def _label(config: RunConfig, row: NeuronRow, scores: np.ndarray, concepts: list[str], text_emb: np.ndarray) -> None:
    from dnd.selection.multilabel import multiple_labels, text_similarity

    best = np.argsort(-scores, kind="stable")[: config.clip_dissect.candidates]
    names = [concepts[i] for i in best]
    row.candidates = [Candidate(concepts[i], score=float(scores[i])) for i in best]
    row.label = names[0]
    row.labels = multiple_labels(names, scores[best], text_similarity(text_emb[best]),
                                 config.selection.multilabel_similarity)
