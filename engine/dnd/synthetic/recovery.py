"""Did the engine recover the planted concepts? Labels are compared with the truth in the world's
own vocabulary: a label counts when it names exactly the planted concept's terms (so "red circle"
does not count for a neuron that detects red), after normalising plurals and filler words."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from dnd.synthetic.truth import planted_truth
from dnd.synthetic.world import parse_phrase


def terms(text: Any) -> frozenset[str] | None:
    if not isinstance(text, str):
        return None
    concept = parse_phrase(text)
    return frozenset(concept.terms) if concept is not None else None


def names(label: Any, concept: str) -> bool:
    got = terms(label)
    return got is not None and got == terms(concept)


def recovery(frame: Any, with_similarity: bool = True) -> dict[str, Any]:
    """Accuracy per layer and per neuron kind, multi-label coverage of polysemantic neurons, and
    (optionally) the mean sentence-embedding cosine between label and truth."""
    truth = planted_truth()
    per_layer: dict[str, list[bool]] = defaultdict(list)
    per_kind: dict[str, list[bool]] = defaultdict(list)
    both_named: list[bool] = []
    pairs: list[tuple[str, str]] = []
    misses: list[dict[str, Any]] = []
    for row in frame.itertuples():
        entry = truth.get(row.layer, {}).get(int(row.neuron))
        if entry is None:
            continue
        concepts = entry["concepts"]
        label = row.label if isinstance(row.label, str) else None
        hit = any(names(label, c) for c in concepts)
        per_layer[row.layer].append(hit)
        per_kind[entry["kind"]].append(hit)
        if entry["kind"] == "polysemantic":
            labels = list(row.labels) if row.labels is not None else []
            both_named.append(all(any(names(l, c) for l in labels) for c in concepts))
        if not hit:
            misses.append({"layer": row.layer, "neuron": int(row.neuron), "truth": concepts, "label": label})
        pairs.append((label or "", concepts[0] if len(concepts) == 1 else " or ".join(concepts)))
    summary: dict[str, Any] = {
        "accuracy": {layer: round(float(np.mean(v)), 4) for layer, v in per_layer.items()},
        "neurons": {layer: len(v) for layer, v in per_layer.items()},
        "accuracy_by_kind": {kind: round(float(np.mean(v)), 4) for kind, v in sorted(per_kind.items())},
        "polysemantic_both_named": round(float(np.mean(both_named)), 4) if both_named else None,
        "misses": misses,
    }
    if with_similarity and pairs:
        summary["sentence_cosine"] = round(_mean_cosine(pairs), 4)
    return summary


def _mean_cosine(pairs: list[tuple[str, str]]) -> float:
    from sentence_transformers import SentenceTransformer

    from dnd.concepts.extractive import default_model_path

    model = SentenceTransformer(default_model_path(), device="cpu")
    labels = model.encode([a for a, _ in pairs], normalize_embeddings=True)
    truths = model.encode([b for _, b in pairs], normalize_embeddings=True)
    return float(np.mean(np.sum(labels * truths, axis=1)))
