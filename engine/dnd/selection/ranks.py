"""Step 3, substeps 2–3 of Best Concept Selection: rank the generated images by the neuron's
activation and gather the ranks H_j of each candidate concept's images (paper section 3.3).

Conventions used by every function here and by :mod:`dnd.selection.scoring`:

* Rank 1 is the image with the **largest** scalar activation, as the paper defines
  ``Rank(x'; G) = 1`` for the largest element of G_n.
* Tied activations share the **average** of the ranks they occupy (three images tied for places
  2, 3 and 4 all get rank 3). The average is the only tie rule that does not depend on the order
  in which the images were generated, and it is symmetric: no candidate concept gains or loses
  rank mass because its images happened to come first. The ranks of G_n still sum to
  1 + 2 + … + |G_n|, so mean-rank scores stay comparable between neurons.
* A NaN activation carries no evidence that the image excites the neuron, so NaN images rank
  after every real number (including -inf) and are tied among themselves by the same averaging.
* Ranks are float64 because averaged ties can be half-integers.
"""

from __future__ import annotations

import numpy as np

from dnd.errors import ConfigError


def _activations_vector(activations: object) -> np.ndarray:
    """The scalar activations g(A_n(x_new)) as a 1-D float64 vector, or a ConfigError."""
    try:
        values = np.asarray(activations, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"activations must be numbers (one scalar per generated image); got {activations!r}: {exc}"
        ) from None
    if values.ndim != 1:
        raise ConfigError(
            f"activations must be a 1-D array with one scalar per generated image; got shape {values.shape}"
        )
    return values


def _descending_order(values: np.ndarray) -> np.ndarray:
    """Positions of ``values`` from largest to smallest, NaN last, equal values kept in input order.

    A stable sort keeps this order reproducible; the tie rule itself (averaging) does not depend
    on it, but :func:`top_t_indices` in scoring does, and it must be deterministic.
    """
    is_nan = np.isnan(values)
    # lexsort sorts by the last key first: real numbers before NaN, then by descending value.
    # NaN is replaced by 0 only so the secondary key is a valid number; is_nan decides its place.
    descending_key = -np.where(is_nan, 0.0, values)
    return np.lexsort((descending_key, is_nan))


def rank_images(activations: np.ndarray) -> np.ndarray:
    """Rank of each generated image in G_n, the neuron's activations on all generated images.

    Returns a float64 array aligned with ``activations``: 1.0 for the largest activation, average
    ranks for ties, NaN activations last (tied among themselves). An empty input gives an empty
    array.
    """
    values = _activations_vector(activations)
    count = values.size
    ranks = np.empty(count, dtype=np.float64)
    if count == 0:
        return ranks
    order = _descending_order(values)
    sorted_values = values[order]
    sorted_nan = np.isnan(sorted_values)
    # A new tie group starts wherever the value changes; NaN == NaN is False in numpy, so the
    # NaN tail is joined explicitly through the is-NaN flag instead of the value comparison.
    value_changes = sorted_values[1:] != sorted_values[:-1]
    both_nan = sorted_nan[1:] & sorted_nan[:-1]
    group_starts = np.flatnonzero(np.concatenate(([True], value_changes & ~both_nan)))
    group_ends = np.concatenate((group_starts[1:], [count]))  # exclusive
    # A group occupying 0-based positions s..e-1 holds ranks s+1..e, whose average is (s+1+e)/2.
    group_rank = (group_starts + 1 + group_ends) / 2.0
    sizes = group_ends - group_starts
    ranks[order] = np.repeat(group_rank, sizes)
    return ranks


def _concept_index_vector(concept_index: object, n_images: int, n_candidates: int | None) -> tuple[np.ndarray, int]:
    """Validated concept index (which candidate generated image i) and the number of candidates."""
    index = np.asarray(concept_index)
    if index.ndim != 1 or index.size != n_images:
        raise ConfigError(
            f"concept_index must be a 1-D array with one entry per generated image ({n_images}); "
            f"got shape {index.shape}"
        )
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise ConfigError(
            f"concept_index must hold integer candidate positions; got dtype {index.dtype}: {index!r}"
        )
    index = index.astype(np.int64, copy=False)
    largest = int(index.max()) if index.size else -1
    if n_candidates is None:
        n_candidates = largest + 1
    elif isinstance(n_candidates, bool) or not isinstance(n_candidates, (int, np.integer)) or n_candidates < 0:
        raise ConfigError(f"n_candidates must be a non-negative integer; got {n_candidates!r}")
    n_candidates = int(n_candidates)
    if index.size and (int(index.min()) < 0 or largest >= n_candidates):
        bad = index[(index < 0) | (index >= n_candidates)]
        raise ConfigError(
            f"concept_index values must lie in 0..{n_candidates - 1} (one per candidate concept); "
            f"got {bad.tolist()}"
        )
    return index, n_candidates


def concept_ranks(
    activations: np.ndarray, concept_index: np.ndarray, n_candidates: int | None = None
) -> list[np.ndarray]:
    """H_j for every candidate concept j: the ranks (in G_n) of the images generated from T_j,
    sorted ascending so ``H_j[0]`` is the concept's best-ranked image.

    ``concept_index[i]`` is the candidate that generated image i. ``n_candidates`` is N; pass it
    so that trailing candidates whose images were all refused by the generator still get their
    (empty) H_j. Without it, N is taken as ``max(concept_index) + 1``.

    Returns a list of N float64 arrays. A candidate with no images gets an empty array; the
    rank-based scoring functions give it a score of -inf, so it is never selected unless every
    candidate is empty.
    """
    values = _activations_vector(activations)
    index, n_candidates = _concept_index_vector(concept_index, values.size, n_candidates)
    # Ranks are taken over all of G_n at once (every candidate's images together), which is what
    # makes the concepts compete: an image's rank says how it fares against the other concepts.
    ranks = rank_images(values)
    return [np.sort(ranks[index == j]) for j in range(n_candidates)]


def top_t_indices(
    activations: np.ndarray, concept_index: np.ndarray, n_candidates: int | None = None, t: int = 10
) -> list[np.ndarray]:
    """D_j^t for every candidate concept j: positions (into the generated images) of the ``t``
    highest-activating images of concept j, highest first (paper A.1.4, Image Products).

    Ordering follows :func:`rank_images` (NaN last); equal activations keep generation order, so
    the choice is deterministic. A concept with fewer than ``t`` images keeps all of them; one with
    none gets an empty array. Returns a list of N int64 arrays.
    """
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ConfigError(f"t (generated images per concept for Image Products) must be an integer >= 1; got {t!r}")
    values = _activations_vector(activations)
    index, n_candidates = _concept_index_vector(concept_index, values.size, n_candidates)
    order = _descending_order(values)
    ordered_concepts = index[order]
    return [order[ordered_concepts == j][: int(t)].astype(np.int64) for j in range(n_candidates)]
