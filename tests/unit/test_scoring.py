"""The scoring functions of paper A.1.4 on hand-worked examples."""

import math

import numpy as np
import pytest

from dnd.errors import ConfigError
from dnd.selection.ranks import concept_ranks
from dnd.selection.scoring import (
    DEFAULT_SCORING,
    IMAGE_PRODUCT_FUNCTIONS,
    SCORING_FUNCTIONS,
    get_scoring_function,
    score_all,
    score_image_products,
    score_mean,
    score_topk_squared,
    score_topk_squared_image_products,
    select_best,
)

# Worked example: N = 3 candidate concepts × Q = 4 generated images (same as test_ranks).
# Activation = 13 - rank:
#   concept 0: activations 2, 12, 1, 11 -> H_0 = [1, 2, 11, 12]
#   concept 1: activations 9, 10, 7, 8  -> H_1 = [3, 4, 5, 6]
#   concept 2: activations 3, 6, 4, 5   -> H_2 = [7, 8, 9, 10]
ACTIVATIONS = np.array([2, 12, 1, 11, 9, 10, 7, 8, 3, 6, 4, 5], dtype=float)
CONCEPT_INDEX = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
CANDIDATES = ["stripes", "dogs", "sky"]

# Probe top images I (K = 2): E = [1, 0] and [0, 1].
TOP_IMAGE_EMB = np.array([[1.0, 0.0], [0.0, 1.0]])
# Generated-image embeddings, one row per activation above. With t = 2 only the two most
# activating images of each concept count (marked *); the others are chosen so that including
# them by mistake would change the score.
GENERATED_EMB = np.array(
    [
        [-1.0, 0.0],  # image 0, concept 0, act 2
        [1.0, 0.0],  # image 1, concept 0, act 12 *
        [-1.0, 0.0],  # image 2, concept 0, act 1
        [1.0, 0.0],  # image 3, concept 0, act 11 *
        [0.8, 0.6],  # image 4, concept 1, act 9 *
        [0.6, 0.8],  # image 5, concept 1, act 10 *
        [0.0, -1.0],  # image 6, concept 1, act 7
        [0.0, -1.0],  # image 7, concept 1, act 8
        [1.0, 0.0],  # image 8, concept 2, act 3
        [0.0, 1.0],  # image 9, concept 2, act 6 *
        [1.0, 0.0],  # image 10, concept 2, act 4
        [-1.0, 0.0],  # image 11, concept 2, act 5 *
    ]
)


def worked_H():
    return concept_ranks(ACTIVATIONS, CONCEPT_INDEX, 3)


def test_mean_of_the_worked_example():
    # score_M = -(1+2+11+12)/4 = -6.5 ; -(3+4+5+6)/4 = -4.5 ; -(7+8+9+10)/4 = -8.5
    scores = score_mean(worked_H())
    np.testing.assert_allclose(scores, [-6.5, -4.5, -8.5])
    assert select_best(scores, CANDIDATES) == 1


def test_topk_squared_beta_2_of_the_worked_example():
    # β = 2: -(1² + 2²)/2 = -2.5 ; -(3² + 4²)/2 = -12.5 ; -(7² + 8²)/2 = -56.5
    # Concept 0's two excellent images win even though its other two are the worst of all.
    scores = score_topk_squared(worked_H(), beta=2)
    np.testing.assert_allclose(scores, [-2.5, -12.5, -56.5])
    assert select_best(scores, CANDIDATES) == 0


def test_topk_squared_beta_larger_than_q_averages_over_available_images():
    # β = 5 > Q = 4, so the mean is over the 4 images each concept has:
    # -(1+4+121+144)/4 = -270/4 = -67.5 ; -(9+16+25+36)/4 = -86/4 = -21.5 ;
    # -(49+64+81+100)/4 = -294/4 = -73.5
    scores = score_topk_squared(worked_H(), beta=5)
    np.testing.assert_allclose(scores, [-67.5, -21.5, -73.5])
    assert select_best(scores, CANDIDATES) == 1


def test_image_products_of_the_worked_example():
    # D_j^t with t = 2 (images marked * above). Each score = mean over 2 × 2 pairs:
    # concept 0: [1,0]·[1,0]=1, [0,1]·[1,0]=0, twice      -> (1+0+1+0)/4 = 0.5
    # concept 1: [1,0]·[.6,.8]=.6, [0,1]·[.6,.8]=.8,
    #            [1,0]·[.8,.6]=.8, [0,1]·[.8,.6]=.6         -> 2.8/4 = 0.7
    # concept 2: [1,0]·[0,1]=0, [0,1]·[0,1]=1,
    #            [1,0]·[-1,0]=-1, [0,1]·[-1,0]=0            -> 0/4 = 0.0
    scores = score_all(ACTIVATIONS, CONCEPT_INDEX, 3, TOP_IMAGE_EMB, GENERATED_EMB, beta=2, t=2)
    np.testing.assert_allclose(scores["image_products"], [0.5, 0.7, 0.0])


def test_score_all_of_the_worked_example_beta_2():
    # TK (β=2) = [-2.5, -12.5, -56.5] -> Rank 1, 2, 3 -> weights N-Rank = 2, 1, 0.
    # TK-IP = [2·0.5, 1·0.7, 0·0.0] = [1.0, 0.7, 0.0]: concept 0 wins although concept 1 has the
    # higher image-product score (0.7 > 0.5).
    scores = score_all(ACTIVATIONS, CONCEPT_INDEX, 3, TOP_IMAGE_EMB, GENERATED_EMB, beta=2, t=2)
    assert set(scores) == set(SCORING_FUNCTIONS)
    np.testing.assert_allclose(scores["mean"], [-6.5, -4.5, -8.5])
    np.testing.assert_allclose(scores["topk_squared"], [-2.5, -12.5, -56.5])
    np.testing.assert_allclose(scores["topk_squared_image_products"], [1.0, 0.7, 0.0])
    assert select_best(scores[DEFAULT_SCORING], CANDIDATES) == 0


def test_score_all_of_the_worked_example_beta_5():
    # TK (β=5) = [-67.5, -21.5, -73.5] -> Rank 2, 1, 3 -> weights 1, 2, 0.
    # TK-IP = [1·0.5, 2·0.7, 0·0.0] = [0.5, 1.4, 0.0]
    scores = score_all(ACTIVATIONS, CONCEPT_INDEX, 3, TOP_IMAGE_EMB, GENERATED_EMB, beta=5, t=2)
    np.testing.assert_allclose(scores["topk_squared_image_products"], [0.5, 1.4, 0.0])
    assert select_best(scores["topk_squared_image_products"], CANDIDATES) == 1


def test_t_larger_than_q_uses_every_image():
    # t = 10 > Q = 4: concept 0 uses all four images, mean embedding [0, 0] -> IP = 0.0.
    # concept 1: mean of [.8,.6], [.6,.8], [0,-1], [0,-1] = [0.35, -0.15]; I's mean = [.5, .5]
    #            -> 0.5·0.35 + 0.5·(-0.15) = 0.1
    # concept 2: mean of [1,0], [0,1], [1,0], [-1,0] = [0.25, 0.25] -> 0.25
    scores = score_all(ACTIVATIONS, CONCEPT_INDEX, 3, TOP_IMAGE_EMB, GENERATED_EMB, beta=2, t=10)
    np.testing.assert_allclose(scores["image_products"], [0.0, 0.1, 0.25], atol=1e-12)


def test_image_products_uses_cosine_for_non_unit_vectors():
    # [2, 0] -> [1, 0]; [3, 3] -> [1/√2, 1/√2]; cosine = 1/√2.
    scores = score_image_products(np.array([[2.0, 0.0]]), [np.array([[3.0, 3.0]])])
    np.testing.assert_allclose(scores, [1 / math.sqrt(2)])


def test_image_products_with_explicit_pairs():
    # I = {[1,0], [0,1]}, D^t = {[0,1]} -> ([1,0]·[0,1] + [0,1]·[0,1]) / (2·1) = 0.5
    # I = {[1,0], [0,1]}, D^t = {[-1,0], [0,-1]} -> (-1 + 0 + 0 - 1) / 4 = -0.5
    scores = score_image_products(TOP_IMAGE_EMB, [np.array([[0.0, 1.0]]), np.array([[-1.0, 0.0], [0.0, -1.0]])])
    np.testing.assert_allclose(scores, [0.5, -0.5])


def test_tk_ip_best_tk_concept_loses_to_much_better_image_products():
    # H_0 = [1, 2] -> TK(β=5, over 2) = -(1+4)/2 = -2.5   -> Rank 1 -> weight 3-1 = 2
    # H_1 = [3, 4] -> TK = -(9+16)/2 = -12.5              -> Rank 2 -> weight 1
    # H_2 = [5, 6] -> TK = -(25+36)/2 = -30.5             -> Rank 3 -> weight 0
    # IP = [0.3, 0.9, 0.5] -> TK-IP = [0.6, 0.9, 0.0]: concept 1 beats the best TK concept.
    H = [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])]
    scores = score_topk_squared_image_products(H, np.array([0.3, 0.9, 0.5]), beta=5)
    np.testing.assert_allclose(scores, [0.6, 0.9, 0.0])
    assert select_best(scores, ["a", "b", "c"]) == 1


def test_concept_whose_images_all_rank_last():
    # Activations 6..1; concept 2 owns the two smallest -> H_2 = [5, 6].
    # Mean: [-1.5, -3.5, -5.5]. TK β=5 over 2 images: [-(1+4)/2, -(9+16)/2, -(25+36)/2]
    #   = [-2.5, -12.5, -30.5]. Concept 2 is TK Rank 3 = N, so its TK-IP weight is 0 and its
    #   perfect image-product score 1.0 counts for nothing: TK-IP = [2·0.2, 1·0.1, 0·1.0].
    H = concept_ranks([6, 5, 4, 3, 2, 1], [0, 0, 1, 1, 2, 2], 3)
    np.testing.assert_array_equal(H[2], [5, 6])
    np.testing.assert_allclose(score_mean(H), [-1.5, -3.5, -5.5])
    np.testing.assert_allclose(score_topk_squared(H, 5), [-2.5, -12.5, -30.5])
    np.testing.assert_allclose(score_topk_squared_image_products(H, np.array([0.2, 0.1, 1.0])), [0.4, 0.1, 0.0])


def test_concept_with_no_images_scores_minus_infinity():
    # Activations 1, 2 (concept 0) and 3, 4 (concept 2); concept 1 generated nothing.
    # H = [[3, 4], [], [1, 2]]
    # Mean: [-3.5, -inf, -1.5]; TK β=5: [-(9+16)/2, -inf, -(1+4)/2] = [-12.5, -inf, -2.5].
    # TK ranks: concept 2 -> 1, concept 0 -> 2, concept 1 -> 3 -> weights [1, 0, 2];
    # IP = [0.5, 0.9, 0.4] -> TK-IP = [0.5, -inf (no images), 0.8].
    H = concept_ranks([1, 2, 3, 4], [0, 0, 2, 2], 3)
    np.testing.assert_allclose(score_mean(H), [-3.5, -np.inf, -1.5])
    np.testing.assert_allclose(score_topk_squared(H, 5), [-12.5, -np.inf, -2.5])
    np.testing.assert_allclose(
        score_topk_squared_image_products(H, np.array([0.5, 0.9, 0.4]), 5), [0.5, -np.inf, 0.8]
    )
    assert select_best(score_mean(H), ["a", "b", "c"]) == 2


def test_image_products_of_a_concept_without_images_is_minus_infinity():
    scores = score_image_products(TOP_IMAGE_EMB, [np.zeros((0, 2)), np.array([[1.0, 0.0]])])
    # Second: ([1,0]·[1,0] + [0,1]·[1,0]) / 2 = 0.5
    np.testing.assert_allclose(scores, [-np.inf, 0.5])


def test_all_concepts_empty_selects_the_first():
    H = concept_ranks([], np.array([], dtype=int), 2)
    scores = score_mean(H)
    np.testing.assert_array_equal(scores, [-np.inf, -np.inf])
    assert select_best(scores, ["a", "b"]) == 0


def test_tied_topk_scores_get_the_same_competition_rank():
    # Activations 5, 5, 5, 5, 1, 1: the four 5s share places 1..4 -> 2.5; the 1s places 5..6 -> 5.5.
    # H = [[2.5, 2.5], [2.5, 2.5], [5.5, 5.5]]
    # TK β=5 over 2: -(6.25+6.25)/2 = -6.25 twice, -(30.25+30.25)/2 = -30.25
    # Competition ranks 1, 1, 3 -> weights 2, 2, 0; IP [0.4, 0.4, 0.9] -> [0.8, 0.8, 0.0].
    H = concept_ranks([5, 5, 5, 5, 1, 1], [0, 0, 1, 1, 2, 2], 3)
    np.testing.assert_allclose(score_topk_squared(H, 5), [-6.25, -6.25, -30.25])
    scores = score_topk_squared_image_products(H, np.array([0.4, 0.4, 0.9]), 5)
    np.testing.assert_allclose(scores, [0.8, 0.8, 0.0])
    # Equal scores: the earlier candidate wins.
    assert select_best(scores, ["a", "b", "c"]) == 0


def test_nan_activations_rank_last_in_scoring():
    # Activations 3, NaN (concept 0); 2, 1 (concept 1). Ranks: 3 -> 1, 2 -> 2, 1 -> 3, NaN -> 4.
    # H = [[1, 4], [2, 3]]; Mean: [-2.5, -2.5] tie -> earlier (concept 0) wins.
    # TK β=1: [-1, -4] -> concept 0.
    H = concept_ranks([3, np.nan, 2, 1], [0, 0, 1, 1], 2)
    np.testing.assert_array_equal(H[0], [1, 4])
    np.testing.assert_array_equal(H[1], [2, 3])
    np.testing.assert_allclose(score_mean(H), [-2.5, -2.5])
    np.testing.assert_allclose(score_topk_squared(H, 1), [-1.0, -4.0])
    assert select_best(score_mean(H), ["a", "b"]) == 0


def test_without_embedder_image_functions_are_unavailable():
    scores = score_all(ACTIVATIONS, CONCEPT_INDEX, 3, None, None, beta=2, t=2)
    for name in IMAGE_PRODUCT_FUNCTIONS:
        assert np.isnan(scores[name]).all()
    np.testing.assert_allclose(scores["topk_squared"], [-2.5, -12.5, -56.5])
    with pytest.raises(ConfigError, match="NaN"):
        select_best(scores[DEFAULT_SCORING], CANDIDATES)


def test_nan_is_never_selected():
    assert select_best(np.array([np.nan, -np.inf, -3.0]), ["a", "b", "c"]) == 2
    assert select_best(np.array([np.nan, -np.inf]), ["a", "b"]) == 1


def test_scoring_functions_share_one_signature():
    H = [np.array([1.0, 2.0]), np.array([3.0, 4.0])]
    ip = np.array([0.1, 0.2])
    # (H, ip_scores, beta) for all four; mean -> [-1.5, -3.5]; TK β=1 -> [-1, -9];
    # IP -> [0.1, 0.2]; TK-IP weights [1, 0] -> [0.1, 0.0].
    expected = {
        "mean": [-1.5, -3.5],
        "topk_squared": [-1.0, -9.0],
        "image_products": [0.1, 0.2],
        "topk_squared_image_products": [0.1, 0.0],
    }
    for name, fn in SCORING_FUNCTIONS.items():
        np.testing.assert_allclose(fn(H, ip, 1), expected[name])


def test_unknown_scoring_name_is_a_config_error():
    with pytest.raises(ConfigError, match="'median'.*mean, topk_squared"):
        get_scoring_function("median")


@pytest.mark.parametrize("beta", [0, -1, 2.5, True])
def test_bad_beta_is_a_config_error(beta):
    with pytest.raises(ConfigError, match="beta"):
        score_topk_squared([np.array([1.0])], beta=beta)


def test_bad_inputs_are_config_errors():
    with pytest.raises(ConfigError, match="one score per candidate"):
        score_topk_squared_image_products([np.array([1.0])], np.array([0.1, 0.2]))
    with pytest.raises(ConfigError, match="embedding size 3, expected 2"):
        score_image_products(TOP_IMAGE_EMB, [np.ones((1, 3))])
    with pytest.raises(ConfigError, match="zero vectors"):
        score_image_products(np.zeros((1, 2)), [np.ones((1, 2))])
    with pytest.raises(ConfigError, match="finite ranks"):
        score_mean([np.array([0.0, 1.0])])
    with pytest.raises(ConfigError, match="one entry per candidate"):
        select_best(np.array([1.0, 2.0]), ["only one"])
    with pytest.raises(ConfigError, match="generated_emb"):
        score_all(ACTIVATIONS, CONCEPT_INDEX, 3, TOP_IMAGE_EMB, None)
    with pytest.raises(ConfigError, match="one row per activation"):
        score_all(ACTIVATIONS, CONCEPT_INDEX, 3, TOP_IMAGE_EMB, GENERATED_EMB[:5])
