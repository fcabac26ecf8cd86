"""CLIP-Dissect's soft-WPMI against a 6-image x 4-concept example worked term by term."""

import math

import numpy as np
import pytest

from dnd.methods.soft_wpmi import concept_probabilities, soft_wpmi

# Image-concept similarities: images 0-2 look like concept 0 ("red"), images 3-5 like concept 2.
SIMILARITY = np.array([
    [0.9, 0.1, 0.0, 0.2],
    [0.8, 0.2, 0.1, 0.1],
    [0.7, 0.0, 0.3, 0.2],
    [0.1, 0.2, 0.9, 0.0],
    [0.0, 0.1, 0.8, 0.3],
    [0.2, 0.3, 0.7, 0.1],
])
# Neuron 0 fires on images 0 and 1; neuron 1 on images 4 and 3.
ACTIVATIONS = np.array([
    [5.0, 4.0, 1.0, 0.0, 0.5, 0.2],
    [0.1, 0.0, 0.3, 2.0, 3.0, 1.0],
])


def by_hand(a, top_k, lam, p_start, p_end, min_prob=1e-7):
    p = []  # p(t_m | x_i): softmax over the four concepts of a times the similarity
    for row in SIMILARITY:
        weights = [math.exp(a * s) for s in row]
        p.append([w / sum(weights) for w in weights])
    log_given = []
    for acts in ACTIVATIONS:
        order = sorted(range(6), key=lambda i: -acts[i])[:top_k]
        values = []
        for m in range(4):
            total = 0.0
            for j, image in enumerate(order):
                member = p_start - j / top_k * (p_start - p_end)
                total += math.log(1 - member * (1 - p[image][m]) + min_prob)
            values.append(total)
        log_given.append(values)
    # log p(t_m): the log of the mean over the two neurons of p(t_m | B_k).
    log_prior = [math.log((math.exp(log_given[0][m]) + math.exp(log_given[1][m])) / 2) for m in range(4)]
    return [[log_given[k][m] - lam * log_prior[m] for m in range(4)] for k in range(2)]


def test_soft_wpmi_matches_the_formula_term_by_term():
    ours = soft_wpmi(ACTIVATIONS, SIMILARITY, top_k=2, a=10.0, lam=1.0, p_start=0.998, p_end=0.97)
    assert ours == pytest.approx(np.array(by_hand(10.0, 2, 1.0, 0.998, 0.97)), rel=1e-9, abs=1e-9)
    other = soft_wpmi(ACTIVATIONS, SIMILARITY, top_k=3, a=2.0, lam=0.5, p_start=0.9, p_end=0.6)
    assert other == pytest.approx(np.array(by_hand(2.0, 3, 0.5, 0.9, 0.6)), rel=1e-9, abs=1e-9)


def test_each_neuron_is_labelled_by_the_concept_its_top_images_show():
    scores = soft_wpmi(ACTIVATIONS, SIMILARITY, top_k=2)
    assert scores.argmax(axis=1).tolist() == [0, 2]


def test_a_top_k_larger_than_the_probe_uses_every_image():
    everything = soft_wpmi(ACTIVATIONS, SIMILARITY, top_k=100)
    assert np.isfinite(everything).all() and everything.shape == (2, 4)


def test_concept_probabilities_are_a_softmax_over_concepts():
    p = concept_probabilities(SIMILARITY, 10.0)
    assert p.sum(axis=1) == pytest.approx(np.ones(6))
    assert p[0, 0] == pytest.approx(math.exp(9) / (math.exp(9) + math.exp(1) + math.exp(0) + math.exp(2)))


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(2, 6\) and \(5, 4\)"):
        soft_wpmi(ACTIVATIONS, SIMILARITY[:5])


def test_extra_candidates_are_clip_dissects_best_not_already_proposed(monkeypatch):
    """candidates.clip_dissect_top: N appends the neuron's N best concepts by soft-WPMI, after the
    summaries' candidates, skipping one the summaries already proposed (same text up to case)."""
    from types import SimpleNamespace

    from dnd.methods import clip_dissect
    from dnd.records import Candidate, NeuronRow

    concepts = ["red", "circle", "blue", "dots"]
    scores = np.array([[0.9, 0.1, 0.5, 0.7]])  # best first: red, dots, blue, circle
    layers = {"planted": clip_dissect.LayerScores({7: 0}, scores)}
    monkeypatch.setattr(clip_dissect, "soft_wpmi_scores", lambda *a: (layers, None, {"concepts": 4}))
    config = SimpleNamespace(candidates=SimpleNamespace(clip_dissect_top=2))
    row = NeuronRow("planted", 7, candidates=[Candidate("Red"), Candidate("red circle")])
    failed = NeuronRow("planted", 7, status="failed")
    counts = clip_dissect.add_candidates(config, None, [row, failed], None, lambda m: None, concepts)
    # "red" (its best) is already proposed as "Red": only "dots" of its best two is new.
    assert [c.concept for c in row.candidates] == ["Red", "red circle", "dots"]
    assert failed.candidates == [] and counts["clip_dissect_candidates"]["added"] == 1
