"""Step 3, substep 4 of Best Concept Selection: the concept scoring functions of paper A.1.4.

Every function scores all N candidate concepts of one neuron at once and returns a float64 array
of N scores where **higher is better**; :func:`select_best` picks the label from it.

Shared conventions:

* ``H`` is the list of H_j from :func:`dnd.selection.ranks.concept_ranks`: the ranks (1 = most
  activating) of the images generated from candidate concept j within G_n.
* A candidate with no generated images (the generator refused every prompt) has an empty H_j.
  It carries no evidence for the concept, so every rank-based score gives it -inf: it is never
  selected unless every candidate is empty, and then :func:`select_best` falls back to the
  first candidate.
* NaN means "this function could not be computed" (image-product functions when no CLIP
  embedder is configured). NaN is never selected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dnd.errors import ConfigError
from dnd.selection.ranks import concept_ranks, top_t_indices

__all__ = [
    "DEFAULT_SCORING",
    "IMAGE_PRODUCT_FUNCTIONS",
    "SCORING_FUNCTIONS",
    "ScoringFunction",
    "get_scoring_function",
    "score_all",
    "score_image_products",
    "score_mean",
    "score_topk_squared",
    "score_topk_squared_image_products",
    "select_best",
    "top_t_indices",
]


def _check_beta(beta: object) -> int:
    if isinstance(beta, bool) or not isinstance(beta, (int, np.integer)) or beta < 1:
        raise ConfigError(
            f"beta (number of best-ranked images for TopK Squared) must be an integer >= 1; got {beta!r}"
        )
    return int(beta)


def _padded_ranks(H: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """H as an (N, Q_max) matrix, each row sorted ascending and padded with NaN, plus each Q_j.

    Padding turns the ragged H_j (concepts may have fewer than Q images) into one array so the
    scores are computed for all N candidates in one vectorised pass.
    """
    if isinstance(H, np.ndarray) and H.ndim == 2:
        rows = list(H)
    elif isinstance(H, (list, tuple)):
        rows = list(H)
    else:
        raise ConfigError(
            f"H must be a list of per-concept rank arrays (one per candidate concept); got {type(H).__name__}"
        )
    checked: list[np.ndarray] = []
    for j, row in enumerate(rows):
        try:
            ranks = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"H[{j}] must hold numeric ranks; got {row!r}") from None
        if ranks.ndim != 1:
            raise ConfigError(f"H[{j}] must be a 1-D array of ranks; got shape {ranks.shape}")
        if not np.all(np.isfinite(ranks)) or np.any(ranks < 1):
            raise ConfigError(
                f"H[{j}] must hold finite ranks >= 1 (rank 1 = most activating image); got {ranks.tolist()}"
            )
        # Sorting here rather than trusting the caller: TopK Squared needs the β *lowest* ranks.
        checked.append(np.sort(ranks))
    counts = np.array([r.size for r in checked], dtype=np.int64)
    width = int(counts.max()) if counts.size else 0
    matrix = np.full((len(checked), width), np.nan)
    for j, ranks in enumerate(checked):
        matrix[j, : ranks.size] = ranks
    return matrix, counts


def score_mean(H: Sequence[np.ndarray]) -> np.ndarray:
    """Mean: score_M(H_j) = -(1/Q) Σ_i H_ji, the negative mean rank of concept j's images.

    Q is the number of images concept j actually has, so a concept is not punished for images
    the generator refused. Empty H_j → -inf.
    """
    matrix, counts = _padded_ranks(H)
    totals = np.nansum(matrix, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = -totals / counts
    scores[counts == 0] = -np.inf
    return scores


def score_topk_squared(H: Sequence[np.ndarray], beta: int = 5) -> np.ndarray:
    """TopK Squared: score_TK(H_j, β) = -(1/β) Σ_{i≤β} H_ji², over the β lowest (best) ranks.

    Squaring spreads the scores apart (rank 1 vs 2 differs by 3, rank 9 vs 10 by 19) and keeping
    only the β best images stops a few poor generations from sinking a concept.

    When concept j has fewer than β images, the mean is taken over the Q_j < β it has (divide by
    Q_j, not β): dividing by β would treat the missing images as rank 0, i.e. better than the
    best image, and reward a concept for having images refused. Empty H_j → -inf.
    """
    beta = _check_beta(beta)
    matrix, counts = _padded_ranks(H)
    best = matrix[:, :beta]
    used = np.minimum(counts, beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = -np.nansum(best * best, axis=1) / used
    scores[used == 0] = -np.inf
    return scores


def _unit_rows(embeddings: object, what: str) -> np.ndarray:
    """Rows of ``embeddings`` scaled to unit length, so dot products are cosine similarities."""
    try:
        rows = np.asarray(embeddings, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a numeric (n, d) array of embeddings; got {embeddings!r}") from None
    if rows.ndim != 2:
        raise ConfigError(f"{what} must be a 2-D (n, d) array of embeddings; got shape {rows.shape}")
    if not np.all(np.isfinite(rows)):
        raise ConfigError(f"{what} must hold finite numbers; got non-finite values in an array of shape {rows.shape}")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if rows.shape[0] and np.any(norms == 0):
        zero = np.flatnonzero(norms[:, 0] == 0).tolist()
        raise ConfigError(f"{what} rows {zero} are zero vectors; a cosine similarity needs non-zero embeddings")
    return rows / norms if rows.shape[0] else rows


def score_image_products(
    top_image_emb: np.ndarray, concept_image_emb: Sequence[np.ndarray]
) -> np.ndarray:
    """Image Products: score_IP(I, D_j^t) = 1/(|I|·|D_j^t|) Σ_{x∈I} Σ_{x_new∈D_j^t} E(x)·E(x_new).

    ``top_image_emb`` is (K, d): E(x) for the neuron's highly activating probe images I.
    ``concept_image_emb[j]`` is (t_j, d): E(x_new) for D_j^t, concept j's t highest-activating
    generated images (see :func:`top_t_indices`).

    The paper calls this an average *cosine* similarity, so rows are L2-normalised here; CLIP
    embedders already return unit rows, for which this changes nothing. A concept with no
    generated images (t_j = 0) has nothing to compare → -inf.
    """
    top = _unit_rows(top_image_emb, "top_image_emb")
    if top.shape[0] == 0:
        raise ConfigError(
            "top_image_emb is empty; Image Products needs at least one highly activating image of the neuron"
        )
    if not isinstance(concept_image_emb, (list, tuple)):
        raise ConfigError(
            "concept_image_emb must be a list with one (t_j, d) array per candidate concept; "
            f"got {type(concept_image_emb).__name__}"
        )
    # The double sum factorises: mean_x mean_y E(x)·E(y) = (mean_x E(x))·(mean_y E(y)), so each
    # concept costs one d-dimensional dot product instead of K·t_j of them.
    top_centroid = top.mean(axis=0)
    scores = np.full(len(concept_image_emb), -np.inf)
    for j, emb in enumerate(concept_image_emb):
        rows = _unit_rows(emb, f"concept_image_emb[{j}]")
        if rows.shape[0] == 0:
            continue
        if rows.shape[1] != top.shape[1]:
            raise ConfigError(
                f"concept_image_emb[{j}] has embedding size {rows.shape[1]}, expected {top.shape[1]} like top_image_emb"
            )
        scores[j] = float(top_centroid @ rows.mean(axis=0))
    return scores


def score_topk_squared_image_products(
    H: Sequence[np.ndarray], ip_scores: np.ndarray | None, beta: int = 5
) -> np.ndarray:
    """TopK Squared + Image Products (the paper's default):
    score_TK-IP = (N - Rank(score_TK(H_j, β); R_TK)) · score_IP(I, D_j^t).

    Rank over R_TK gives 1 to the highest TopK Squared score, so the best TK concept is weighted
    N-1, the next N-2, … and the worst weight 0. That is the paper's formula as written; its
    consequences, kept deliberately:

    * the worst TopK Squared concept scores exactly 0 whatever its image similarity;
    * with negative image-product scores a larger weight makes the score *lower*.

    Ties in score_TK get the same, smallest rank of their group ("competition" ranking, 1-2-2-4):
    equally good concepts receive equal weight, and neither is demoted by the order in which the
    LLM listed them.

    ``ip_scores`` is from :func:`score_image_products`; ``None`` or NaN entries mean "no
    embedder", and give NaN. An empty H_j or an IP of -inf gives -inf.
    """
    tk = score_topk_squared(H, beta)
    n = tk.size
    if ip_scores is None:
        return np.full(n, np.nan)
    ip = np.asarray(ip_scores, dtype=np.float64)
    if ip.shape != (n,):
        raise ConfigError(f"ip_scores must have one score per candidate concept ({n}); got shape {ip.shape}")
    # Competition rank: 1 + how many candidates have a strictly better TopK Squared score.
    tk_rank = 1 + (tk[None, :] > tk[:, None]).sum(axis=1)
    weight = (n - tk_rank).astype(np.float64)
    scores = weight * ip
    no_images = np.isneginf(tk) | np.isneginf(ip)
    scores[no_images] = -np.inf
    # "Unavailable" outranks "empty": without an embedder the whole function is unusable, and
    # letting the -inf of an empty concept win over NaN would select a concept with no images.
    scores[np.isnan(ip)] = np.nan
    return scores


ScoringFunction = Callable[[Sequence[np.ndarray], "np.ndarray | None", int], np.ndarray]
"""Uniform signature of :data:`SCORING_FUNCTIONS`: ``(H, ip_scores, beta) -> scores (N,)``.

``ip_scores`` are the precomputed Image Products scores (or ``None`` without an embedder), so the
embeddings are reduced once and shared by every function that needs them."""


def _mean(H: Sequence[np.ndarray], ip_scores: np.ndarray | None, beta: int) -> np.ndarray:
    return score_mean(H)


def _topk_squared(H: Sequence[np.ndarray], ip_scores: np.ndarray | None, beta: int) -> np.ndarray:
    return score_topk_squared(H, beta)


def _image_products(H: Sequence[np.ndarray], ip_scores: np.ndarray | None, beta: int) -> np.ndarray:
    n = len(H)
    if ip_scores is None:
        return np.full(n, np.nan)
    ip = np.array(ip_scores, dtype=np.float64)
    if ip.shape != (n,):
        raise ConfigError(f"ip_scores must have one score per candidate concept ({n}); got shape {ip.shape}")
    return ip


def _topk_squared_image_products(H: Sequence[np.ndarray], ip_scores: np.ndarray | None, beta: int) -> np.ndarray:
    return score_topk_squared_image_products(H, ip_scores, beta)


SCORING_FUNCTIONS: dict[str, ScoringFunction] = {
    "mean": _mean,
    "topk_squared": _topk_squared,
    "image_products": _image_products,
    "topk_squared_image_products": _topk_squared_image_products,
}

DEFAULT_SCORING = "topk_squared_image_products"
"""The paper uses TopK Squared + Image Products for all experiments unless stated otherwise."""

IMAGE_PRODUCT_FUNCTIONS = frozenset({"image_products", "topk_squared_image_products"})
"""Functions that need CLIP image embeddings; without an embedder they score NaN (unavailable)."""


def get_scoring_function(name: str) -> ScoringFunction:
    """The scoring function called ``name`` in a run config, or a ConfigError listing the choices."""
    try:
        return SCORING_FUNCTIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown scoring function {name!r}; expected one of: {', '.join(SCORING_FUNCTIONS)}"
        ) from None


def score_all(
    activations: np.ndarray,
    concept_index: np.ndarray,
    n_candidates: int,
    top_image_emb: np.ndarray | None,
    generated_emb: np.ndarray | None,
    beta: int = 5,
    t: int = 10,
) -> dict[str, np.ndarray]:
    """Every scoring function's per-candidate scores for one neuron.

    ``activations[i]`` is the neuron's scalar activation on generated image i, ``concept_index[i]``
    the candidate (0..n_candidates-1) that generated it, and ``generated_emb`` (num_generated, d)
    the CLIP embeddings of the same images in the same order. ``top_image_emb`` (K, d) embeds the
    neuron's highly activating probe images; pass ``None`` for both when no embedder is configured,
    and the functions in :data:`IMAGE_PRODUCT_FUNCTIONS` come back as all-NaN (unavailable).

    Returns ``{name: scores (n_candidates,)}`` for every name in :data:`SCORING_FUNCTIONS`.
    """
    beta = _check_beta(beta)
    H = concept_ranks(activations, concept_index, n_candidates)
    ip_scores: np.ndarray | None = None
    if top_image_emb is not None:
        if generated_emb is None:
            raise ConfigError("generated_emb is None but top_image_emb was given; Image Products needs both embeddings")
        generated = np.asarray(generated_emb, dtype=np.float64)
        n_generated = len(np.asarray(activations))  # already checked 1-D by concept_ranks
        if generated.ndim != 2 or generated.shape[0] != n_generated:
            raise ConfigError(
                f"generated_emb must be (num_generated, d) with one row per activation ({n_generated}); "
                f"got shape {generated.shape}"
            )
        chosen = top_t_indices(activations, concept_index, n_candidates, t)
        ip_scores = score_image_products(top_image_emb, [generated[idx] for idx in chosen])
    return {name: fn(H, ip_scores, beta) for name, fn in SCORING_FUNCTIONS.items()}


def select_best(scores: np.ndarray, candidates: Sequence[str]) -> int:
    """Index of the candidate concept with the highest score: the neuron's label.

    Ties go to the earlier candidate (lower index), so the choice never depends on anything but
    the scores and the candidates' order. NaN scores are never selected; -inf (no images) is
    selected only when no candidate has a real score, and then the first such candidate wins.
    Raises ConfigError when every score is NaN: the function is unavailable (e.g. an
    image-product function with no embedder configured).
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size != len(candidates):
        raise ConfigError(
            f"scores must have one entry per candidate concept ({len(candidates)}); got shape {values.shape}"
        )
    if values.size == 0:
        raise ConfigError("there are no candidate concepts to select from; expected at least one")
    usable = ~np.isnan(values)
    if not usable.any():
        raise ConfigError(
            f"every score is NaN for candidates {list(candidates)!r}; the scoring function is unavailable "
            f"(image-product functions need an embedder)"
        )
    best = values[usable].max()
    # flatnonzero is in index order, so [0] is the earliest of the tied best candidates.
    return int(np.flatnonzero(usable & (values == best))[0])
