"""NeuronEval's reliable metrics (Oikarinen, Yan & Weng, ICML 2025, arXiv 2506.05774), vectorised
over (neuron, explanation) pairs.

A neuron k is described by its activation vector a_k over the probing set D ([a_k]_i is the run's
summary of the neuron on image i) and an explanation t by its concept vector c_t ([c_t]_i is how
present t is in image i, in [0, 1]). Of the paper's 18 metrics only five pass both of its sanity
checks (missing labels, extra labels): Pearson correlation, cosine similarity, AUPRC, F1 and IoU.

* correlation, cosine: a_k against c_t as given (soft or binary).
* auprc: the area under the precision-recall curve of a_k as a detector of the binary c_t
  (``present``: by default c_t ≥ 0.5; a soft source states its own rule), as average precision
  with tied activations taken together (one threshold per distinct value), so the order of equal
  activations never changes a score.
* f1, iou: a_k binarised at its top-α quantile (a_i ≥ the (1 − α) quantile; a neuron constant on
  more than 1 − α of D keeps only the values above that constant) against the binary c_t.

A score is NaN where it is undefined: a constant vector (correlation), a zero vector (cosine), an
explanation present nowhere in D (auprc, f1, iou).
"""

from __future__ import annotations

import numpy as np

METRICS = ("correlation", "cosine", "auprc", "f1", "iou")

#: NeuronEval tunes α per setting on held-out neurons; 5% is our default, stated in the config.
DEFAULT_ALPHA = 0.05

#: Pairs are scored in chunks of about this many (pair, image) values, so memory stays bounded.
_CHUNK_VALUES = 8_000_000


def binarise_activations(activations: np.ndarray, alpha: float) -> np.ndarray:
    """(neurons, images) bool: each neuron's top-α images, by the rule in the module docstring."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    a = np.asarray(activations, dtype=np.float64)
    threshold = np.quantile(a, 1.0 - alpha, axis=1, keepdims=True)
    floor = a.min(axis=1, keepdims=True)
    # A ReLU neuron silent on most of D has its quantile at the silence: only real firing counts.
    return np.where(threshold <= floor, a > threshold, a >= threshold)


def _at_or_above(a: np.ndarray) -> np.ndarray:
    """(neurons, images) int32: for each image, how many images have an activation ≥ its own."""
    n = a.shape[1]
    order = np.argsort(a, axis=1)
    ascending = np.take_along_axis(a, order, axis=1)
    first = np.ones(a.shape, dtype=bool)
    first[:, 1:] = ascending[:, 1:] != ascending[:, :-1]
    # The first index of each image's tie group; the images from there on are at or above it.
    starts = np.maximum.accumulate(np.where(first, np.arange(n, dtype=np.int32), np.int32(0)), axis=1)
    counts = np.empty(a.shape, dtype=np.int32)
    np.put_along_axis(counts, order, (n - starts).astype(np.int32), axis=1)
    return counts


def _average_precision(at_or_above: np.ndarray, positive: np.ndarray, neuron_of: np.ndarray,
                       concept_of: np.ndarray) -> np.ndarray:
    """AUPRC of every pair, from the positives alone: a positive image i contributes the precision
    at its threshold, TP(a ≥ a_i) / #(a ≥ a_i), and AP is their mean. Positives are few, so pairs
    are handled as (pairs, positives) arrays, grouped by how many positives their concept has."""
    n = at_or_above.shape[1]
    counts = positive.sum(axis=1)
    sentinel = np.int32(n + 1)
    # The neuron's count per image, plus one column for padding that sorts after every real count.
    padded_counts = np.concatenate([at_or_above, np.full((at_or_above.shape[0], 1), sentinel, np.int32)], axis=1)
    width = max(int(counts.max()), 1)
    where = np.full((positive.shape[0], width), n, dtype=np.int32)  # column n is the padding
    for t in np.flatnonzero(counts):
        where[t, : counts[t]] = np.flatnonzero(positive[t])
    out = np.full(len(neuron_of), np.nan)
    by_size = np.argsort(counts[concept_of], kind="stable")
    first = 0
    while first < len(by_size):
        size = max(int(counts[concept_of[by_size[first]]]), 1)
        # Pairs of about the same number of positives together, about _CHUNK_VALUES values at a time.
        last = first + 1
        while (last < len(by_size) and counts[concept_of[by_size[last]]] <= size * 2
               and (last - first + 1) * size * 2 <= _CHUNK_VALUES):
            last += 1
        chunk = by_size[first:last]
        k, t = neuron_of[chunk], concept_of[chunk]
        cols = int(counts[t].max()) or 1
        above = padded_counts[k[:, None], where[t, :cols]]
        above.sort(axis=1)
        # TP at a positive's threshold: the positives whose count is ≤ its own (ties included),
        # found in one search over the rows laid end to end.
        offset = (np.arange(len(chunk), dtype=np.int64) * (int(sentinel) + 1))[:, None]
        flat = (above + offset).ravel()
        true_positives = np.searchsorted(flat, flat, side="right").reshape(above.shape)
        true_positives -= np.arange(len(chunk), dtype=np.int64)[:, None] * cols  # row r starts at r * cols
        real = above < sentinel
        precision = np.where(real, true_positives / np.where(real, above, 1), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[chunk] = precision.sum(axis=1) / counts[t]
        first = last
    return out


def _dots(x: np.ndarray, y: np.ndarray, rows_x: np.ndarray, rows_y: np.ndarray) -> np.ndarray:
    """Σ_i x[rows_x[p], i] · y[rows_y[p], i] for every p, accumulated in float64."""
    return np.einsum("pi,pi->p", x[rows_x], y[rows_y], dtype=np.float64)


def score_pairs(activations: np.ndarray, concepts: np.ndarray, neuron_of: np.ndarray, concept_of: np.ndarray,
                alpha: float = DEFAULT_ALPHA, metrics: tuple[str, ...] = METRICS,
                present: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every metric for each pair p: neuron ``neuron_of[p]`` (a row of ``activations``, (neurons,
    images)) against explanation ``concept_of[p]`` (a row of ``concepts``, (explanations, images),
    values in [0, 1]); ``present`` (bool, like ``concepts``) is the binary concept of AUPRC, F1 and
    IoU, by default ``concepts >= 0.5``. Returns ``{metric: (pairs,) float64}``."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown faithfulness metric(s) {unknown}; expected some of {', '.join(METRICS)}")
    a = np.asarray(activations, dtype=np.float32)
    c = np.asarray(concepts, dtype=np.float32)
    if a.ndim != 2 or c.ndim != 2 or a.shape[1] != c.shape[1]:
        raise ValueError(f"activations (neurons, images) and concepts (explanations, images) must share the image "
                         f"axis; got shapes {a.shape} and {c.shape}")
    neuron_of = np.asarray(neuron_of, dtype=np.int64)
    concept_of = np.asarray(concept_of, dtype=np.int64)
    out = {name: np.full(len(neuron_of), np.nan) for name in metrics}
    n = a.shape[1]
    if len(neuron_of) == 0 or n == 0:
        return out
    positive = c >= 0.5 if present is None else np.asarray(present, dtype=bool)
    if positive.shape != c.shape:
        raise ValueError(f"present must have the concepts' shape {c.shape}, got {positive.shape}")
    n_positive = positive.sum(axis=1).astype(np.float64)
    wanted = set(metrics)

    # Per-vector statistics once; per pair only dot products, so correlation needs no centred copies:
    # r = (a·c / n − ā c̄) / (σ_a σ_c).
    a_mean, c_mean = a.mean(axis=1, dtype=np.float64), c.mean(axis=1, dtype=np.float64)
    a_sq = np.einsum("ki,ki->k", a, a, dtype=np.float64)
    c_sq = np.einsum("ti,ti->t", c, c, dtype=np.float64)
    a_std = np.sqrt(np.maximum(a_sq / n - a_mean**2, 0.0))
    c_std = np.sqrt(np.maximum(c_sq / n - c_mean**2, 0.0))
    if "auprc" in wanted:
        out["auprc"] = _average_precision(_at_or_above(a), positive, neuron_of, concept_of)
    if wanted & {"f1", "iou"}:
        fires = binarise_activations(a, alpha).astype(np.float32)
        n_fires = fires.sum(axis=1, dtype=np.float64)
        positive_f = positive.astype(np.float32)

    step = max(1, _CHUNK_VALUES // n)
    with np.errstate(invalid="ignore", divide="ignore"):
        for first in range(0, len(neuron_of), step):
            k = neuron_of[first : first + step]
            t = concept_of[first : first + step]
            span = slice(first, first + len(k))
            if wanted & {"correlation", "cosine"}:
                dot = _dots(a, c, k, t)
                if "correlation" in wanted:
                    out["correlation"][span] = (dot / n - a_mean[k] * c_mean[t]) / (a_std[k] * c_std[t])
                if "cosine" in wanted:
                    out["cosine"][span] = dot / np.sqrt(a_sq[k] * c_sq[t])
            if wanted & {"f1", "iou"}:
                both = _dots(fires, positive_f, k, t)
                if "f1" in wanted:
                    out["f1"][span] = 2.0 * both / (n_fires[k] + n_positive[t])
                if "iou" in wanted:
                    out["iou"][span] = both / (n_fires[k] + n_positive[t] - both)
    for name in ("auprc", "f1", "iou"):
        if name in out:
            # No positive image: the explanation names nothing in D, and these scores are undefined.
            out[name][(positive.sum(axis=1) == 0)[concept_of]] = np.nan
    for name in ("correlation", "cosine"):
        if name in out:
            out[name][~np.isfinite(out[name])] = np.nan
    return out
