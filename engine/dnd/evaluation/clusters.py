"""Section 5.1: groups of neurons whose candidate concepts say the same thing.

The textual similarity of neurons n and m is S(n, m) = mean of L(T_n) L(T_m)^T, with T_n the
neuron's candidate concepts and L the CLIP text encoder (unit rows). Neurons with S >= phi
(0.8 in the paper) are similar; each neuron is put in exactly one group in which every pair is
similar. Groups are grown greedily: the neuron with the most similar neighbours seeds a group,
which takes in, most similar first, every ungrouped neuron similar to all its members.
"""

from __future__ import annotations

from typing import Any

from dnd.errors import ConfigError

#: The paper's minimum similarity between the concepts of neurons in one group.
DEFAULT_PHI = 0.8


def concept_sets(rows: Any) -> list[list[str]]:
    """Each neuron's candidate concepts (its label alone when it has no candidates)."""
    sets = []
    for row in rows.itertuples():
        # Step 2's candidate set T (the paper's clusters); the sub-phrases Step 3's parsimony adds are not proposals.
        concepts = [c["concept"] for c in (row.candidates if row.candidates is not None else [])
                    if c.get("concept") and not c.get("sub_phrase")]
        sets.append(concepts or [row.label])
    return sets


def similarity_matrix(sets: list[list[str]], encode: Any) -> Any:
    """S[n, m] = mean over concept pairs of the cosine of their text embeddings."""
    import numpy as np

    unique = sorted({c for s in sets for c in s})
    rows = encode(unique)
    where = {c: i for i, c in enumerate(unique)}
    means = [rows[[where[c] for c in s]] for s in sets]
    size = len(sets)
    matrix = np.zeros((size, size), dtype=np.float64)
    for n in range(size):
        for m in range(n, size):
            matrix[n, m] = matrix[m, n] = float((means[n] @ means[m].T).mean())
    return matrix


def group_neurons(similarity: Any, phi: float) -> list[list[int]]:
    """Indices grouped so that every pair within a group has similarity >= phi (see module doc)."""
    import numpy as np

    size = len(similarity)
    similar = similarity >= phi
    np.fill_diagonal(similar, True)
    neighbours = similar.sum(axis=1)
    order = sorted(range(size), key=lambda i: (-int(neighbours[i]), i))
    grouped = np.zeros(size, dtype=bool)
    groups = []
    for seed in order:
        if grouped[seed]:
            continue
        members = [seed]
        grouped[seed] = True
        for other in sorted(range(size), key=lambda j: (-similarity[seed, j], j)):
            if not grouped[other] and all(similar[other, m] for m in members):
                members.append(other)
                grouped[other] = True
        groups.append(sorted(members))
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def analyze_clusters(uri: str, layer: str | None = None, *, phi: float = DEFAULT_PHI, clip_model: str | None = None,
                     plot: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Group a layer's neurons by concept similarity; write a bar chart of group sizes; return the groups."""
    from collections import Counter

    from dnd.evaluation.common import layer_rows, plot_uri, safe_name
    from dnd.evaluation.plots import bar_chart, write_png
    from dnd.evaluation.text import DEFAULT_CLIP, clip_text_encoder
    from dnd.results import Results

    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not -1.0 <= phi <= 1.0:
        raise ConfigError(f"phi must be a similarity between -1 and 1, got {phi!r}")
    results = Results(uri)
    layer, rows = layer_rows(results, layer)
    sets = concept_sets(rows)
    model = clip_model or DEFAULT_CLIP
    matrix = similarity_matrix(sets, clip_text_encoder(model, device))
    neurons = [int(n) for n in rows["neuron"]]
    labels = list(rows["label"])
    groups = []
    for members in group_neurons(matrix, float(phi)):
        names = Counter(labels[i] for i in members)
        groups.append({
            "neurons": [neurons[i] for i in members],
            "label": names.most_common(1)[0][0],
            "labels": [labels[i] for i in members],
        })
    where = write_png(
        bar_chart([g["label"] for g in groups], {"neurons": [len(g["neurons"]) for g in groups]},
                  f"{layer}: neurons per concept group (phi={phi:g})", "neurons"),
        plot_uri(results, plot, f"clusters-{safe_name(layer)}"),
    )
    return {
        "layer": layer,
        "phi": float(phi),
        "clip_model": model,
        "neurons": len(neurons),
        "groups": groups,
        "sizes": [len(g["neurons"]) for g in groups],
        "singletons": sorted(g["neurons"][0] for g in groups if len(g["neurons"]) == 1),
        "plot": where,
    }
