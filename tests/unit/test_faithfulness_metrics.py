"""NeuronEval's five metrics against values worked by hand on tiny vectors."""

import math

import numpy as np
import pytest

from dnd.faithfulness.metrics import METRICS, binarise_activations, score_pairs


def one(a, c, alpha=0.5):
    scores = score_pairs(np.array([a], float), np.array([c], float), [0], [0], alpha=alpha)
    return {name: float(values[0]) for name, values in scores.items()}


def test_a_neuron_that_ranks_both_positives_first():
    s = one([3, 1, 2, 0], [1, 0, 1, 0])
    # centred a = (1.5, -0.5, 0.5, -1.5), centred c = (0.5, -0.5, 0.5, -0.5): 2 / (sqrt(5) * 1)
    assert s["correlation"] == pytest.approx(2 / math.sqrt(5))
    # a·c = 5, |a| = sqrt(14), |c| = sqrt(2)
    assert s["cosine"] == pytest.approx(5 / math.sqrt(28))
    assert s["auprc"] == pytest.approx(1.0)
    # α = 0.5: the median of (0, 1, 2, 3) is 1.5, so images 0 and 2 fire: the concept exactly.
    assert s["f1"] == pytest.approx(1.0) and s["iou"] == pytest.approx(1.0)


def test_average_precision_of_a_neuron_that_ranks_the_positives_last():
    # Ranked: 3 (absent), 2 (absent), 1 (present), 0 (present): precisions 1/3 and 2/4.
    assert one([0, 2, 1, 3], [1, 0, 1, 0])["auprc"] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_tied_activations_share_one_threshold_whatever_their_order():
    # Images 0 and 1 tie; one of them is positive: precision 1/2 at the tie, wherever the positive sits.
    assert one([1, 1, 0, 0], [1, 0, 0, 0])["auprc"] == pytest.approx(0.5)
    assert one([1, 1, 0, 0], [0, 1, 0, 0])["auprc"] == pytest.approx(0.5)


def test_f1_and_iou_at_the_top_alpha_quantile():
    a = [5, 4, 3, 2, 1, 0, 0, 0, 0, 0]
    c = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    # The 0.8 quantile of a is 3 + 0.2 * (4 - 3) = 3.2: images 0 and 1 fire; image 0 is positive.
    s = one(a, c, alpha=0.2)
    assert s["f1"] == pytest.approx(2 * 1 / (2 + 2))
    assert s["iou"] == pytest.approx(1 / (2 + 2 - 1))


def test_a_neuron_silent_on_most_images_fires_only_where_it_is_active():
    fires = binarise_activations(np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 2.0]]), alpha=0.5)
    assert fires.tolist() == [[False] * 9 + [True]]


def test_undefined_scores_are_nan_not_zero():
    constant = one([1, 1, 1, 1], [1, 0, 1, 0])
    assert math.isnan(constant["correlation"])
    absent = one([3, 1, 2, 0], [0, 0, 0, 0])
    assert math.isnan(absent["auprc"]) and math.isnan(absent["f1"]) and math.isnan(absent["iou"])
    assert math.isnan(absent["cosine"]) and math.isnan(absent["correlation"])


def test_soft_concepts_count_for_correlation_and_as_present_from_one_half():
    s = one([3, 1, 2, 0], [0.9, 0.2, 0.6, 0.1])
    # Binary at 0.5: the same positives as the first test.
    assert s["auprc"] == pytest.approx(1.0)
    a, c = np.array([3, 1, 2, 0.0]), np.array([0.9, 0.2, 0.6, 0.1])
    assert s["correlation"] == pytest.approx(np.corrcoef(a, c)[0, 1])


def test_pairs_index_neurons_and_explanations_and_chunks_agree():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 50))
    c = (rng.random((4, 50)) < 0.3).astype(float)
    neuron_of = np.repeat(np.arange(7), 4)
    concept_of = np.tile(np.arange(4), 7)
    together = score_pairs(a, c, neuron_of, concept_of)
    for p in (0, 9, 27):
        alone = score_pairs(a[[neuron_of[p]]], c[[concept_of[p]]], [0], [0])
        for name in METRICS:
            assert together[name][p] == pytest.approx(alone[name][0])


@pytest.mark.parametrize("metric", METRICS)
def test_missing_and_extra_labels_lower_the_true_concepts_score(metric):
    """NeuronEval's two sanity checks on an ideal neuron: it fires exactly on the concept."""
    rng = np.random.default_rng(1)
    present = rng.random(400) < 0.1
    a = present * 2.0 + rng.random(400) * 0.1
    truth = present.astype(float)
    missing = truth.copy()
    missing[np.flatnonzero(present)[: present.sum() // 2]] = 0
    extra = truth.copy()
    extra[rng.choice(np.flatnonzero(~present), size=present.sum(), replace=False)] = 1
    scores = score_pairs(a[None], np.stack([truth, missing, extra]), [0, 0, 0], [0, 1, 2], alpha=0.1)[metric]
    assert scores[1] < scores[0] and scores[2] < scores[0]


def test_unknown_metric_and_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match="'recall'"):
        score_pairs(np.zeros((1, 3)), np.zeros((1, 3)), [0], [0], metrics=("recall",))
    with pytest.raises(ValueError, match=r"\(1, 3\) and \(1, 4\)"):
        score_pairs(np.zeros((1, 3)), np.zeros((1, 4)), [0], [0])


def brute_force_average_precision(a, present):
    """Precision-recall at each distinct activation, from the highest down: AP = Σ (R_n − R_{n−1}) P_n."""
    total = sum(present)
    ap, recall_before = 0.0, 0.0
    for threshold in sorted(set(a), reverse=True):
        chosen = [p for x, p in zip(a, present) if x >= threshold]
        recall = sum(chosen) / total
        ap += (recall - recall_before) * (sum(chosen) / len(chosen))
        recall_before = recall
    return ap


def test_average_precision_matches_the_precision_recall_curve_on_tied_random_vectors():
    rng = np.random.default_rng(7)
    activations = rng.integers(0, 6, size=(5, 40)).astype(float)  # few values: many ties
    present = rng.random((6, 40)) < rng.uniform(0.05, 0.6, size=(6, 1))
    neuron_of = np.repeat(np.arange(5), 6)
    concept_of = np.tile(np.arange(6), 5)
    ours = score_pairs(activations, present.astype(float), neuron_of, concept_of, metrics=("auprc",))["auprc"]
    for p, (k, t) in enumerate(zip(neuron_of, concept_of)):
        assert ours[p] == pytest.approx(brute_force_average_precision(list(activations[k]), list(present[t])))
