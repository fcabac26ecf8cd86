"""Small metrics the analyses report."""

from __future__ import annotations

from typing import Any


def auroc(scores: Any, positive: Any) -> float:
    """Area under the ROC curve of ``scores`` separating ``positive`` from the rest (Mann-Whitney U,
    tied scores counted half); NaN when one side is empty."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks: every member of a group of tied scores gets the group's mean rank.
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def accuracy_by_class(correct: Any, image_class: Any, classes: list[str]) -> dict[str, Any]:
    """Overall accuracy and accuracy per class from per-image correctness (classes with no images are left out)."""
    import numpy as np

    correct = np.asarray(correct, dtype=bool)
    image_class = np.asarray(image_class)
    per_class = {}
    for index, name in enumerate(classes):
        mask = image_class == index
        if mask.any():
            per_class[name] = float(correct[mask].mean())
    return {"overall": float(correct.mean()) if len(correct) else float("nan"), "per_class": per_class}
