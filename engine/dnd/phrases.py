"""Phrases of a caption or a label: its words and its candidate sub-phrases.

Shared by the extractive summarizer of Step 2B (which picks a candidate concept among a caption's
phrases) and Step 3's parsimony (which tests a label's shorter phrases), so neither step imports
the other.
"""

from __future__ import annotations

import re

# Grammatical words and BLIP's filler ("a close up of a ... surface", "... on a white background");
# a candidate phrase may contain them ("spool of cable") but may not start or end with them
# ("of cable", "red door and", "gray background").
STOPWORDS = frozenset(
    """
    a an the of in on at to for by with from and or but nor is are was were be been being am it its
    it's this that these those there here some any very into onto over under near next up down
    out off as than then while has have had having do does did his her their our your my he she
    they we you i him them us who whom which what where when how all each both few more most other
    such only own same so too can will just not no one two three top front side behind
    between through during before after above below against about around along across
    sitting standing sits stands lying laying holding looking picture image photo photograph
    close closeup view blurry arafed araffe arafe araffes arafed
    background backdrop surface shot
    """.split()
)
_WORD = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lowercase word tokens (letters/digits with inner apostrophes or hyphens)."""
    return _WORD.findall(text.lower())


# Words that join two things ("a red circle and a blue square"): a phrase spanning one names two
# objects at once ("circle and a red"), never one concept.
_JOINERS = frozenset({"and", "or", "nor", "but", "a", "an", "the"})


def candidate_phrases(caption: str, max_ngram: int) -> list[str]:
    """Every run of 1..max_ngram words of ``caption`` that neither starts nor ends with a
    stopword and does not span a conjunction or article, in order of appearance, without repeats."""
    tokens = words(caption)
    found: dict[str, None] = {}
    for size in range(1, max_ngram + 1):
        for i in range(len(tokens) - size + 1):
            gram = tokens[i : i + size]
            if gram[0] in STOPWORDS or gram[-1] in STOPWORDS or any(w in _JOINERS for w in gram[1:-1]):
                continue
            if _dangling_adverb(tokens, i + size):
                continue
            found.setdefault(" ".join(gram))
    return list(found)


def _dangling_adverb(tokens: list[str], end: int) -> bool:
    """True when the phrase ending before ``end`` stops on an adverb whose participle follows
    ("vertically" of "vertically striped", "brightly" of "brightly lit"): half a modifier."""
    last, following = tokens[end - 1], tokens[end] if end < len(tokens) else ""
    return len(last) > 4 and last.endswith("ly") and following.endswith(("ed", "ing"))
