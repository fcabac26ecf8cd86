"""parse_concept on replies of the kinds chat models really give to the A.1.3 prompts."""

import pytest

from dnd.concepts.parsing import MAX_LABEL_WORDS, parse_concept

# (reply, expected label); expectations written by hand from the rules in parsing.py's docstring.
REPLIES = [
    # Already clean: kept exactly, case and inner punctuation included.
    ("red-themed scenes", "red-themed scenes"),
    ("Children's toys", "Children's toys"),
    ("DNA helix models", "DNA helix models"),
    ("1.5 inch screws", "1.5 inch screws"),
    ("St. Bernard dogs", "St. Bernard dogs"),
    ("Great Dane dogs", "Great Dane dogs"),
    # Quotes (straight, curly, single in pairs only) and trailing periods, in any nesting.
    ('"Red-themed scenes."', "Red-themed scenes"),
    ("“multicolored textiles”", "multicolored textiles"),
    ("“Red-themed scenes”.", "Red-themed scenes"),
    ("'Striped patterns'", "Striped patterns"),
    ("‘Striped patterns’", "Striped patterns"),
    ("dogs'", "dogs'"),
    ("  beige linen textures \n", "beige linen textures"),
    # Numbering and bullets.
    ("1. Red cars", "Red cars"),
    ("1) red cars", "red cars"),
    ("(2) red cars", "red cars"),
    ("- red cars", "red cars"),
    ("• red cars", "red cars"),
    ("* red cars", "red cars"),
    # Markers and markdown.
    ("Label: red cars.", "red cars"),
    ("Concept label: Aquatic animals", "Aquatic animals"),
    ("Answer: red cars", "red cars"),
    ("**Concept label:** red cars", "red cars"),
    ("**Red-themed scenes**", "Red-themed scenes"),
    ("*red cars*", "red cars"),
    ("### Red scenes", "Red scenes"),
    ("Human-Identified Similarity : \"red-themed scenes\"", "red-themed scenes"),
    ("```\nred cars\n```", "red cars"),
    # Multi-line replies: lead-ins skipped, a marked line preferred.
    ("Concept label:\nred cars", "red cars"),
    ('Sure! Here is a concise concept label:\n\n"Red objects"', "Red objects"),
    ("Sure!\nred cars", "red cars"),
    ("Okay.\n\n1. Red cars\n2. Blue cars", "Red cars"),
    ("Red objects\nThese captions all mention something red.", "Red objects"),
    (
        "These descriptions mostly describe many different kinds of objects that are coloured red "
        "in several places.\nLabel: red objects",
        "red objects",
    ),
    ("Here's the label: beige linen textures", "beige linen textures"),
    # Explanations appended to the label.
    ("Red objects. These captions all mention red.", "Red objects"),
    ("Red objects - most captions mention red", "Red objects"),
    ("Red objects (most captions mention red)", "Red objects"),
    ("Red objects—mostly vehicles", "Red objects"),
    ("The common theme is red objects.", "red objects"),
    ("The conceptual similarity in these descriptions is the color red", "the color red"),
    # Commas: a short list is the label; a long enumeration is cut at its first comma.
    ("cages, fences and netting", "cages, fences and netting"),
    (
        "Red objects, such as tractors, dresses, cars, ottomans and spools of cable in many places",
        "Red objects",
    ),
    # Nothing usable.
    ("", None),
    ("   \n\n", None),
    ("???", None),
    ("...", None),
    ("1.", None),
    ("None", None),
    ("N/A", None),
    ("No common concept.", None),
    ("I'm sorry, but I can't find a common concept in these descriptions.", None),
    ("As an AI language model, I cannot see images.", None),
    (
        "The images show a very wide variety of unrelated objects and scenes with no single "
        "theme that connects all of them together",
        None,
    ),
]


@pytest.mark.parametrize("reply, expected", REPLIES, ids=[repr(r)[:40] for r, _ in REPLIES])
def test_reply_table(reply, expected):
    assert parse_concept(reply) == expected


def test_table_is_large_and_varied():
    assert len(REPLIES) >= 20
    assert sum(expected is None for _, expected in REPLIES) >= 8


@pytest.mark.parametrize("reply", [None, 42, b"red cars", ["red cars"]])
def test_non_text_reply_gives_none(reply):
    assert parse_concept(reply) is None


def test_refusal_before_label_means_no_label():
    # The refusal comes first, so the later line is not taken as an answer to the prompt.
    assert parse_concept("I'm sorry, I cannot help with that.\nred cars") is None


def test_marked_line_wins_over_earlier_free_text():
    assert parse_concept("Blue objects\nLabel: red objects") == "red objects"


def test_word_limit():
    label = " ".join(["word"] * MAX_LABEL_WORDS)
    assert parse_concept(label) == label
    assert parse_concept(label + " more") is None
    assert parse_concept("red things and blue things", max_words=3) is None
    assert parse_concept("red things and blue things", max_words=5) == "red things and blue things"
