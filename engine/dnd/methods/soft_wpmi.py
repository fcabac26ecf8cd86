"""CLIP-Dissect's similarity function, soft-WPMI (Oikarinen & Weng, ICLR 2023), vectorised.

For a layer, with P[i, m] the image-text cosine similarity of probe image i and concept m:
- p(t_m | x_i) = softmax_m(a · P[i, :]);
- B_k, the neuron's example set, is its ``top_k`` most activating probe images, the j-th of them
  (j = 0 … top_k−1) a member with probability p_j = p_start − j / top_k · (p_start − p_end);
- log p(t_m | B_k) = Σ_j log(1 − p_j (1 − p(t_m | x_(j))) + min_prob);
- log p(t_m) = log of the mean over the layer's neurons of p(t_m | B_k);
- soft-WPMI(t_m, k) = log p(t_m | B_k) − λ log p(t_m).
The paper's defaults: top_k = 100, a = 10, λ = 1, p_start = 0.998, p_end = 0.97, min_prob = 1e-7.
"""

from __future__ import annotations

import numpy as np

#: Values (neurons x top images x concepts) handled at once, so memory stays bounded.
_CHUNK_VALUES = 8_000_000


def concept_probabilities(similarity: np.ndarray, a: float) -> np.ndarray:
    """(images, concepts): p(t_m | x_i), a softmax over concepts of a times the similarities."""
    logits = a * np.asarray(similarity, dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def soft_wpmi(activations: np.ndarray, similarity: np.ndarray, top_k: int = 100, a: float = 10.0,
              lam: float = 1.0, p_start: float = 0.998, p_end: float = 0.97, min_prob: float = 1e-7) -> np.ndarray:
    """(neurons, concepts) soft-WPMI of every concept for every neuron of one layer.
    ``activations``: (neurons, images); ``similarity``: (images, concepts)."""
    activations = np.asarray(activations, dtype=np.float64)
    if activations.ndim != 2 or similarity.ndim != 2 or activations.shape[1] != similarity.shape[0]:
        raise ValueError(f"activations (neurons, images) and similarity (images, concepts) must share the image axis; "
                         f"got {activations.shape} and {similarity.shape}")
    n_neurons, n_images = activations.shape
    k = min(int(top_k), n_images)
    probabilities = concept_probabilities(similarity, a)
    membership = (p_start - np.arange(k) / top_k * (p_start - p_end))[:, None]  # (k, 1)
    # Each neuron's example set, most activating first (ties broken by image order, as a stable sort does).
    top = np.argsort(-activations, axis=1, kind="stable")[:, :k]
    given_examples = np.empty((n_neurons, similarity.shape[1]))
    step = max(1, _CHUNK_VALUES // max(1, k * similarity.shape[1]))
    for first in range(0, n_neurons, step):
        chosen = probabilities[top[first : first + step]]  # (neurons, k, concepts)
        given_examples[first : first + step] = np.log(1.0 - membership * (1.0 - chosen) + min_prob).sum(axis=1)
    # log of the mean over neurons of p(t | B_k), computed in logs so that no product underflows.
    peak = given_examples.max(axis=0, keepdims=True)
    log_prior = peak + np.log(np.exp(given_examples - peak).mean(axis=0, keepdims=True))
    return given_examples - lam * log_prior
