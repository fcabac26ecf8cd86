"""Multiple labels (paper A.7) and the cross-neuron concept deduplication they rely on."""

import numpy as np
import pytest

from dnd.errors import ConfigError
from dnd.selection.dedupe import concept_key, unique_concepts
from dnd.selection.multilabel import multiple_labels, text_similarity

CANDIDATES = ["stripes", "striped fabric", "polka dots", "metal"]
SCORES = np.array([4.0, 3.0, 2.0, 1.0])
# Hand-set cosine similarities (symmetric, 1 on the diagonal):
#   0-1: 0.90 > 0.81 -> "striped fabric" restates "stripes": dropped.
#   0-2: 0.30, 1-2: 0.20 -> "polka dots" is distinct from the kept "stripes": kept.
#   0-3: 0.81 exactly -> not *exceeding* 0.81: kept as far as "stripes" goes;
#   2-3: 0.50 -> distinct from "polka dots"; 1-3: 0.95 but "striped fabric" was dropped, so it
#   is not a better *kept* label and does not eliminate "metal".
SIMILARITY = np.array(
    [
        [1.00, 0.90, 0.30, 0.81],
        [0.90, 1.00, 0.20, 0.95],
        [0.30, 0.20, 1.00, 0.50],
        [0.81, 0.95, 0.50, 1.00],
    ]
)


def test_similar_label_dropped_distinct_label_kept_boundary_kept():
    assert multiple_labels(CANDIDATES, SCORES, SIMILARITY) == ["stripes", "polka dots", "metal"]


def test_just_above_the_threshold_is_dropped():
    sim = SIMILARITY.copy()
    sim[0, 3] = sim[3, 0] = 0.8100001
    assert multiple_labels(CANDIDATES, SCORES, sim) == ["stripes", "polka dots"]


def test_threshold_is_configurable():
    # Threshold 0.4: "metal" (0.50 to "polka dots") now exceeds it.
    assert multiple_labels(CANDIDATES, SCORES, SIMILARITY, threshold=0.4) == ["stripes", "polka dots"]


def test_candidates_are_taken_in_score_order():
    # Same candidates listed worst first: scores reversed, matrix permuted to match.
    order = [3, 2, 1, 0]
    labels = multiple_labels(
        [CANDIDATES[i] for i in order], SCORES[order], SIMILARITY[np.ix_(order, order)]
    )
    assert labels == ["stripes", "polka dots", "metal"]


def test_max_labels_caps_the_count():
    assert multiple_labels(CANDIDATES, SCORES, SIMILARITY, max_labels=2) == ["stripes", "polka dots"]


def test_unscored_candidates_are_never_labels():
    # "stripes" has NaN (unavailable), "polka dots" -inf (no images): the best real score is now
    # "striped fabric" (3.0); "metal" has similarity 0.95 to it -> dropped.
    scores = np.array([np.nan, 3.0, -np.inf, 1.0])
    assert multiple_labels(CANDIDATES, scores, SIMILARITY) == ["striped fabric"]
    assert multiple_labels(CANDIDATES, np.full(4, -np.inf), SIMILARITY) == []


def test_duplicates_after_case_and_whitespace_are_dropped():
    # Similarity 0.5 would keep it, but it is the same concept as written differently.
    candidates = ["Red circle", "red   circle ", "blue square"]
    sim = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, 0.1], [0.1, 0.1, 1.0]])
    assert multiple_labels(candidates, np.array([3.0, 2.0, 1.0]), sim) == ["Red circle", "blue square"]


def test_equal_scores_keep_candidate_order():
    assert multiple_labels(["a", "b"], np.array([1.0, 1.0]), np.eye(2)) == ["a", "b"]


def test_text_similarity_is_cosine():
    # [3, 4] -> [0.6, 0.8]; [1, 0] stays; cosine = 0.6.
    sim = text_similarity(np.array([[3.0, 4.0], [1.0, 0.0]]))
    np.testing.assert_allclose(sim, [[1.0, 0.6], [0.6, 1.0]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scores": np.array([1.0])}, "one entry per candidate"),
        ({"similarity": np.eye(3)}, r"\(4, 4\)"),
        ({"threshold": float("nan")}, "threshold"),
        ({"max_labels": 0}, "max_labels"),
    ],
)
def test_bad_input_is_a_config_error(kwargs, message):
    arguments = {"candidates": CANDIDATES, "scores": SCORES, "similarity": SIMILARITY, **kwargs}
    with pytest.raises(ConfigError, match=message):
        multiple_labels(**arguments)


# --- dedupe: each distinct candidate concept is generated once across all neurons ---------------


def test_unique_concepts_across_neurons_keep_first_spelling():
    unique, index = unique_concepts(
        [
            ["Red circle", "stripes"],
            ["red  circle", "dogs"],
            ["  Stripes", "Red circle"],
        ]
    )
    # "Red circle" / "red  circle" share the key "red circle"; "stripes" / "  Stripes" share
    # "stripes"; the first-seen spelling (whitespace collapsed) is kept.
    assert unique == ["Red circle", "stripes", "dogs"]
    assert index == [[0, 1], [0, 2], [1, 0]]


def test_concept_key_folds_case_and_whitespace():
    assert concept_key("  Red\tCIRCLE \n") == "red circle"


def test_blank_candidate_is_a_config_error():
    with pytest.raises(ConfigError, match="candidate concept 1 of neuron entry 0"):
        unique_concepts([["stripes", "   "]])
    with pytest.raises(ConfigError, match="list of candidate concept strings"):
        unique_concepts(["stripes"])
