"""Parsimony between nested candidate concepts, and activation evidence for multiple labels."""

from __future__ import annotations

import numpy as np
import pytest

from dnd.errors import ConfigError
from dnd.selection.parsimony import (
    concept_words,
    lifts,
    nested,
    paired_share,
    simplest_sufficient,
    sub_phrases,
    supported_labels,
)


def test_concept_words_drop_filler_and_plurals():
    assert concept_words("A red circle") == {"red", "circle"}
    assert concept_words("images of red circles") == {"red", "circle"}
    assert concept_words("Diagonally striped objects") == {"diagonally", "striped"}
    # "glass" keeps its double s; the filler-only phrase has no content at all.
    assert concept_words("glass") == {"glass"}
    assert concept_words("an image of a thing") == frozenset()


def test_nested_is_a_strict_nonempty_subset():
    assert nested(concept_words("red"), concept_words("red circle"))
    assert not nested(concept_words("red circle"), concept_words("red circle"))
    assert not nested(concept_words("blue"), concept_words("red circle"))
    assert not nested(frozenset(), concept_words("red circle"))


def test_lift_is_the_mean_above_the_floor():
    got = lifts([np.array([3.0, 5.0, np.nan]), np.array([]), np.array([-1.0])], baseline=1.0)
    assert got[0] == 3.0 and np.isnan(got[1]) and got[2] == -2.0


def test_paired_share_is_the_lower_quartile_of_lift_ratios_image_by_image():
    # Lifts over baseline 1: label 2, 4, 1, 2, 4, (NaN); other 0, 1, 0.5, 2, 4, 9 -> pairs 1-5
    # count, ratios 0, 0.25, 0.5, 1, 1. Lower quartile by linear interpolation: position
    # 0.25 * (5 - 1) = 1 of the sorted ratios, 0.25 (the median would be 0.5). The refused image
    # (NaN) on either side drops its pair.
    label = np.array([3.0, 5.0, 2.0, 3.0, 5.0, np.nan])
    other = np.array([1.0, 2.0, 1.5, 3.0, 5.0, 10.0])
    assert paired_share(label, other, 1.0) == pytest.approx(0.25)
    # Between two sorted ratios it interpolates: ratios 0, 1, 1, 1 -> position 0.75 -> 0.75.
    assert paired_share(np.full(4, 2.0), np.array([1.0, 2.0, 2.0, 2.0]), 1.0) == pytest.approx(0.75)
    # Pairs where the label's own image does not lift the neuron say nothing.
    assert np.isnan(paired_share(np.array([0.5, 1.0]), np.array([2.0, 2.0]), 1.0))


def test_sub_phrases_are_the_shorter_phrases_inside_a_label():
    assert sub_phrases("white checkered square") == ["white", "checkered", "square", "white checkered", "checkered square"]
    assert sub_phrases("red") == []
    # Articles and joiners never start or end a part, and a part is never the label again.
    assert sub_phrases("a dog sitting on green grass") == ["dog", "green", "grass", "green grass", "dog sitting on green"]
    assert len(sub_phrases("orange diagonally striped square", limit=3)) == 3


def red_detector():
    # A red detector whose probe mean is 0.1: "red circle" images 1.0 (lift 0.9), "red" images a
    # little lower, as the average shape is smaller than a circle (0.8: lift 0.7, share 0.78);
    # "circle" images are red once in ten, so three pairs in four keep nothing (share 0).
    names = ["red circle", "red", "circle"]
    acts = [np.full(10, 1.0), np.full(10, 0.8), np.array([1.0] + [0.1] * 9)]
    return names, acts


def test_the_label_gives_way_to_a_nested_candidate_that_keeps_its_lift():
    names, acts = red_detector()
    chosen, share = simplest_sufficient(names, 0, acts, baseline=0.1, min_share=0.5)
    assert names[chosen] == "red"
    assert share == pytest.approx(0.7 / 0.9)


def test_the_label_stays_when_the_extra_words_carry_the_activation():
    names, acts = red_detector()
    # Asking for 80% of the lift: "red" keeps 78%, "circle" none; neither is enough.
    assert simplest_sufficient(names, 0, acts, baseline=0.1, min_share=0.8) == (0, None)
    # The neuron's typical activation matters: against a baseline of 0.7, "red" keeps a third.
    assert simplest_sufficient(names, 0, acts, baseline=0.7, min_share=0.5) == (0, None)


def test_among_sufficient_nested_candidates_the_fewest_words_win():
    names = ["orange diagonally striped", "diagonally striped", "striped"]
    acts = [np.full(5, 1.0), np.full(5, 0.95), np.full(5, 0.9)]
    chosen, share = simplest_sufficient(names, 0, acts, baseline=0.0, min_share=0.5)
    assert names[chosen] == "striped" and share == pytest.approx(0.9)


def test_a_broader_category_that_sometimes_renders_the_right_thing_is_not_enough():
    # A diagonal-stripes detector: "striped" image i has the label's layout but a random
    # orientation, diagonal in 4 of 10 pairs. Its mean keeps 40% of the lift, its median pair none.
    names = ["diagonally striped", "striped"]
    striped = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    assert simplest_sufficient(names, 0, [np.ones(10), striped], 0.0, 0.4) == (0, None)


def test_a_sub_phrase_drawn_right_in_a_lucky_majority_of_pairs_is_not_enough():
    # A horizontal-stripes detector: "striped" is drawn horizontal one time in three, and this
    # sample of ten happens to draw it so six times. The median pair keeps all the lift (share
    # 1.0 by the median), but the lower quartile (position 2.25 of the sorted ratios 0,0,0,0,1,...)
    # is 0: the sub-phrase must keep the lift on three pairs in four.
    names = ["horizontally striped", "striped"]
    striped = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    assert np.median(striped) == 1.0
    assert simplest_sufficient(names, 0, [np.ones(10), striped], 0.0, 0.5) == (0, None)
    # Drawn right in eight pairs of ten, it qualifies: position 2.25 falls between two ones.
    striped[[1, 4]] = 1.0
    assert simplest_sufficient(names, 0, [np.ones(10), striped], 0.0, 0.5) == (1, pytest.approx(1.0))


def test_no_yardstick_no_change():
    names, acts = red_detector()
    assert simplest_sufficient(names, 0, acts, baseline=float("nan"), min_share=0.5) == (0, None)
    # A label that activates the neuron less than a typical probe image does has no lift to keep.
    assert simplest_sufficient(names, 0, acts, baseline=2.0, min_share=0.5) == (0, None)
    # A candidate without images is no evidence.
    assert simplest_sufficient(["red circle", "red"], 0, [np.ones(10), np.array([])], 0.0, 0.5) == (0, None)


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="parsimony_share.*1.5"):
        simplest_sufficient(["a"], 0, [np.ones(3)], 0.0, 1.5)
    with pytest.raises(ConfigError, match="one array per candidate"):
        simplest_sufficient(["a", "b"], 0, [np.ones(3)], 0.0, 0.5)
    with pytest.raises(ConfigError, match="multilabel_share"):
        supported_labels(["a"], [0], [np.ones(3)], 0.0, True)
    with pytest.raises(ConfigError, match="baseline"):
        supported_labels(["a"], [0], [np.ones(3)], "0", 0.5)


def test_supported_labels_keep_distinct_concepts_the_neuron_answers():
    names = ["ring", "yellow", "yellow ring", "striped", "green"]
    acts = [np.full(10, 0.8), np.full(10, 0.9), np.full(10, 1.0), np.full(10, 0.2), np.full(10, 0.5)]
    # Baseline 0.1: lifts 0.7, 0.8, 0.9, 0.1, 0.4. "yellow ring" restates kept labels; "striped"
    # keeps a seventh of the label's lift; "green" four sevenths and stays.
    kept = supported_labels(names, [0, 2, 1, 3, 4], acts, 0.1, 0.5)
    assert [names[j] for j in kept] == ["ring", "yellow", "green"]
    assert supported_labels(names, [], acts, 0.1, 0.5) == []
    assert supported_labels(names, [0, 1], acts, float("nan"), 0.5) == [0]
