"""Multiple labels for polysemantic neurons (paper appendix A.7).

The top candidate concepts of Best Concept Selection become the neuron's labels, but a label
whose CLIP text cosine similarity to a better label *exceeds* 0.81 is eliminated: it restates a
concept already reported rather than adding a distinct one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dnd.errors import ConfigError
from dnd.selection.dedupe import concept_key

SIMILARITY_THRESHOLD = 0.81
"""Paper A.7: labels with CLIP cosine similarity exceeding this to a better label are dropped."""


def text_similarity(text_emb: np.ndarray) -> np.ndarray:
    """(N, N) cosine similarity matrix of the candidates' text embeddings (rows L2-normalised
    here, so any embedder's output is compared as the paper's cosine similarity)."""
    try:
        rows = np.asarray(text_emb, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"text_emb must be a numeric (N, d) array of text embeddings; got {text_emb!r}") from None
    if rows.ndim != 2 or not np.all(np.isfinite(rows)):
        raise ConfigError(f"text_emb must be a finite 2-D (N, d) array of text embeddings; got shape {rows.shape}")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ConfigError(
            f"text_emb rows {np.flatnonzero(norms[:, 0] == 0).tolist()} are zero vectors; "
            "cosine similarity needs non-zero embeddings"
        )
    unit = rows / norms
    return unit @ unit.T


def multiple_labels(
    candidates: Sequence[str],
    scores: np.ndarray,
    similarity: np.ndarray,
    threshold: float = SIMILARITY_THRESHOLD,
    max_labels: int | None = None,
) -> list[str]:
    """The neuron's labels, best first, after A.7's similarity elimination.

    ``candidates[j]`` has score ``scores[j]`` (higher is better) and ``similarity[j, k]`` is the
    cosine similarity of the text embeddings of candidates j and k (see :func:`text_similarity`).

    Candidates are visited in score order, ties going to the earlier candidate as in
    :func:`dnd.selection.scoring.select_best`, so the first label is always the selected one. A
    candidate is kept only if, against **every** label already kept (all of them better):

    * its similarity is ≤ ``threshold`` — the paper eliminates similarities *exceeding* 0.81, so
      exactly 0.81 is kept;
    * it is not the same text after whitespace collapsing and case folding (a duplicate whose
      embedding similarity might, through numeric noise, fall just under the threshold).

    Only kept labels count as "better": a candidate eliminated for resembling a kept label does not
    in turn eliminate later candidates. A score of NaN (function unavailable) or -inf (no
    generated images) is no evidence for the concept, so such candidates are never labels; the
    list is empty when no candidate has a real score. ``max_labels`` caps the number of labels
    (``None``: no cap).
    """
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
        raise ConfigError(f"candidates must be a list of candidate concept strings; got {candidates!r}")
    n = len(candidates)
    for j, text in enumerate(candidates):
        if not isinstance(text, str):
            raise ConfigError(f"candidates[{j}] must be a string; got {text!r}")
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (n,):
        raise ConfigError(f"scores must have one entry per candidate ({n}); got shape {values.shape}")
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.shape != (n, n):
        raise ConfigError(f"similarity must be an ({n}, {n}) matrix for {n} candidates; got shape {sim.shape}")
    if not np.all(np.isfinite(sim)):
        raise ConfigError("similarity must hold finite cosine similarities; it contains NaN or infinity")
    is_number = isinstance(threshold, (int, float, np.integer, np.floating)) and not isinstance(threshold, bool)
    if not is_number or not np.isfinite(threshold):
        raise ConfigError(f"threshold must be a finite number (the paper uses 0.81); got {threshold!r}")
    if max_labels is not None and (
        isinstance(max_labels, bool) or not isinstance(max_labels, (int, np.integer)) or max_labels < 1
    ):
        raise ConfigError(f"max_labels must be an integer >= 1 or None for no cap; got {max_labels!r}")

    scored = np.flatnonzero(~np.isnan(values) & ~np.isneginf(values))
    # Stable sort on the negated score: best first, equal scores in candidate order.
    order = scored[np.argsort(-values[scored], kind="stable")]
    kept: list[int] = []
    kept_keys: set[str] = set()
    for j in order:
        if max_labels is not None and len(kept) >= max_labels:
            break
        key = concept_key(candidates[j])
        if key in kept_keys:
            continue
        if kept and np.any(sim[j, kept] > threshold):
            continue
        kept.append(int(j))
        kept_keys.add(key)
    return [candidates[j] for j in kept]
