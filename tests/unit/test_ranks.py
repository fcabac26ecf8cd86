"""Step 3 ranks (paper 3.3, substeps 2–3): Rank 1 = largest activation, H_j per concept."""

import numpy as np
import pytest

from dnd.errors import ConfigError
from dnd.selection.ranks import concept_ranks, rank_images, top_t_indices

# The worked example shared with test_scoring: N = 3 candidate concepts × Q = 4 images.
# Activations are 13 - rank, so every rank can be read off directly:
#   concept 0: activations 2, 12, 1, 11  -> ranks 11, 1, 12, 2
#   concept 1: activations 9, 10, 7, 8   -> ranks 4, 3, 6, 5
#   concept 2: activations 3, 6, 4, 5    -> ranks 10, 7, 9, 8
ACTIVATIONS = np.array([2, 12, 1, 11, 9, 10, 7, 8, 3, 6, 4, 5], dtype=float)
CONCEPT_INDEX = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])


def test_rank_one_is_the_largest_activation():
    ranks = rank_images(ACTIVATIONS)
    np.testing.assert_array_equal(ranks, [11, 1, 12, 2, 4, 3, 6, 5, 10, 7, 9, 8])


def test_h_j_is_sorted_ascending_per_concept():
    H = concept_ranks(ACTIVATIONS, CONCEPT_INDEX, 3)
    np.testing.assert_array_equal(H[0], [1, 2, 11, 12])
    np.testing.assert_array_equal(H[1], [3, 4, 5, 6])
    np.testing.assert_array_equal(H[2], [7, 8, 9, 10])


def test_ties_share_the_average_rank():
    # Sorted descending: 5, 5, 5 occupy places 1..3 -> (1+2+3)/3 = 2;
    # 3, 3 occupy places 4..5 -> (4+5)/2 = 4.5; 1 is place 6.
    ranks = rank_images([5, 3, 5, 1, 3, 5])
    np.testing.assert_array_equal(ranks, [2, 4.5, 2, 6, 4.5, 2])
    # Averaging keeps the total rank mass 1+2+...+6 = 21.
    assert ranks.sum() == 21


def test_tie_ranks_do_not_depend_on_image_order():
    values = np.array([5, 3, 5, 1, 3, 5], dtype=float)
    permutation = np.array([3, 0, 5, 1, 4, 2])
    np.testing.assert_array_equal(rank_images(values[permutation]), rank_images(values)[permutation])


def test_nan_ranks_last_and_ties_among_itself():
    # 7 -> 1, 2 -> 2, the two NaN share places 3 and 4 -> 3.5.
    np.testing.assert_array_equal(rank_images([np.nan, 2, np.nan, 7]), [3.5, 2, 3.5, 1])


def test_nan_ranks_after_minus_infinity():
    # 0 -> 1, -inf -> 2 (a real, if extreme, value), NaN -> 3.
    np.testing.assert_array_equal(rank_images([-np.inf, np.nan, 0.0]), [2, 3, 1])


def test_all_nan_is_one_tie_group():
    # Three NaN share places 1..3 -> 2 each.
    np.testing.assert_array_equal(rank_images([np.nan] * 3), [2, 2, 2])


def test_empty_activations_give_empty_ranks():
    assert rank_images(np.array([])).shape == (0,)


def test_concept_with_no_images_gets_empty_h():
    # Concept 1 had every prompt refused; concept 2 is the best (activations 3, 4 -> ranks 2, 1).
    H = concept_ranks([1, 2, 3, 4], [0, 0, 2, 2], n_candidates=3)
    np.testing.assert_array_equal(H[0], [3, 4])
    assert H[1].size == 0
    np.testing.assert_array_equal(H[2], [1, 2])


def test_trailing_empty_concept_needs_n_candidates():
    assert len(concept_ranks([1, 2], [0, 0])) == 1
    H = concept_ranks([1, 2], [0, 0], n_candidates=2)
    assert len(H) == 2 and H[1].size == 0


def test_top_t_indices_are_highest_activating_first():
    # t = 2: concept 0 -> activations 12 (image 1), 11 (image 3); concept 1 -> 10 (5), 9 (4);
    # concept 2 -> 6 (9), 5 (11).
    chosen = top_t_indices(ACTIVATIONS, CONCEPT_INDEX, 3, t=2)
    assert [c.tolist() for c in chosen] == [[1, 3], [5, 4], [9, 11]]


def test_top_t_keeps_all_when_fewer_than_t_and_breaks_ties_by_generation_order():
    # Concept 0: images 0 and 2 tie at 5 -> generation order 0 then 2; image 4 is NaN -> last.
    chosen = top_t_indices([5, 1, 5, 9, np.nan], [0, 1, 0, 1, 0], n_candidates=3, t=10)
    assert [c.tolist() for c in chosen] == [[0, 2, 4], [3, 1], []]


@pytest.mark.parametrize(
    "activations, concept_index, n_candidates, message",
    [
        ([[1, 2], [3, 4]], [0, 0], None, "1-D"),
        ([1, 2, 3], [0, 0], None, "one entry per generated image"),
        ([1, 2], [0, 3], 2, "0..1"),
        ([1, 2], [0, -1], 2, "0..1"),
        ([1, 2], [0.0, 1.0], 2, "integer"),
        ([1, 2], [0, 1], -1, "n_candidates"),
        (["a", "b"], [0, 1], 2, "numbers"),
    ],
)
def test_bad_input_is_a_config_error(activations, concept_index, n_candidates, message):
    with pytest.raises(ConfigError, match=message):
        concept_ranks(activations, concept_index, n_candidates)


def test_bad_t_is_a_config_error():
    with pytest.raises(ConfigError, match="t .*>= 1; got 0"):
        top_t_indices([1.0], [0], 1, t=0)
