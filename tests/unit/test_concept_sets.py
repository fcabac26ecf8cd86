"""Concept sets for CLIP-Dissect: a file, the planted world's vocabulary, and clear errors."""

import pytest

from dnd.errors import ConfigError
from dnd.methods.concept_sets import load_concept_set
from dnd.synthetic.truth import FC_CLASSES
from dnd.synthetic.world import parse_phrase


def test_a_file_gives_one_concept_a_line_without_blanks_or_repeats(tmp_path):
    path = tmp_path / "concepts.txt"
    path.write_text("dog\n\n  striped   cat \ndog\nsky\n")
    assert load_concept_set(f"file:{path}") == ["dog", "striped cat", "sky"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_concept_set(f"file:{tmp_path}/missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ConfigError, match="is empty"):
        load_concept_set(f"file:{empty}")


def test_the_planted_set_is_the_vocabulary_plus_distractors_outside_it():
    concepts = load_concept_set("planted:50")
    assert concepts[: len(FC_CLASSES)] == list(FC_CLASSES)
    distractors = concepts[len(FC_CLASSES):]
    assert len(distractors) == 50 and all(parse_phrase(word) is None for word in distractors)
    assert load_concept_set("planted:50") == concepts  # the same words every time


def test_unknown_sets_and_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="unknown concept set backend 'nosuch'"):
        load_concept_set("nosuch")
    with pytest.raises(ConfigError, match="whole number"):
        load_concept_set("planted:many")
    with pytest.raises(ConfigError, match="english:N needs N >= 1"):
        load_concept_set("english:0")
