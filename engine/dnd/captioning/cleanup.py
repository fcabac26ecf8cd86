"""Removing captioning-model artefacts before a caption reaches the summarizer (step 2B).

BLIP's captions carry noise that the summarizer would otherwise treat as content: the invented word
"arafed" (and its spellings), framing phrases ("there is a picture of …"), loops that repeat the same
phrase, and leftover special tokens. Cleaning them keeps the candidate concepts about the images.
"""

from __future__ import annotations

import re

#: Bumped whenever cleaning changes its output, so cached captions made by an older version are
#: not mistaken for current ones (captioners put it in their cache keys).
CLEANUP_VERSION = "1"

_SPECIAL_TOKENS = re.compile(
    r"\[(?:SEP|UNK|CLS|PAD|MASK|DEC|unused\d+)\]|</?s>|<pad>|<unk>"
    r"|<\|(?:startoftext|endoftext|im_end|im_start|eot_id)\|>",
    re.IGNORECASE,
)

# "arafed", "araffe", "arafe", "araffes", "arrafed", "arafly"... BLIP's made-up word, with the
# article before it so that "an araffe elephant" becomes "an elephant" and "an arafed man" "a man".
_ARTEFACT = r"ar+af+(?:e|ed|es|ee|fe|fed|fes|ly|y|d)?"
_ARTEFACT_WITH_ARTICLE = re.compile(
    rf"(?:\b(?P<article>an?)\s+)?\b{_ARTEFACT}\b\s*(?P<next>\w?)", re.IGNORECASE
)

_FRAMING = re.compile(
    r"^(?:"
    r"there\s+(?:is|are)|this\s+is|these\s+are|it\s+is|here\s+is"
    r"|(?:a|an|the)\s+(?:picture|image|photo|photograph)\s+(?:of|showing|that\s+shows)"
    r"|(?:picture|image|photo|photograph)\s+of"
    r")\b[\s,:]*",
    re.IGNORECASE,
)

# Words, or one punctuation mark, as the units in which repeats are found.
_TOKEN = re.compile(r"[\w'-]+|[^\w\s]")
# Between two copies of a repeated phrase BLIP often puts one of these.
_JOINERS = frozenset({"and", "with", "of", ",", "&"})


def _article_for(word_start: str) -> str:
    return "an" if word_start.lower() in "aeiou" else "a"


def _drop_artefacts(text: str) -> str:
    def replace(match: re.Match) -> str:
        following = match.group("next")
        article = match.group("article")
        if article and following:
            fitting = _article_for(following)
            return f"{fitting.capitalize() if article[0].isupper() else fitting} {following}"
        if article:
            return article + " "
        return following

    return _ARTEFACT_WITH_ARTICLE.sub(replace, text)


def _strip_prefix(text: str, prefix: str) -> str:
    words = prefix.split()
    if not words:
        return text
    pattern = r"^\s*" + r"\s+".join(re.escape(word) for word in words) + r"\b[\s,:]*"
    return re.sub(pattern, "", text, count=1, flags=re.IGNORECASE)


def _strip_framing(text: str) -> str:
    # Framing phrases nest ("there is a picture of …"), so strip until none is left.
    while True:
        stripped = _FRAMING.sub("", text, count=1)
        if stripped == text:
            return text
        text = stripped


def _collapse_repeats(text: str) -> str:
    """Remove a phrase that immediately repeats the one before it, optionally after a joiner word.

    Deletions cut the original string, so spacing and punctuation elsewhere are kept as written.
    """
    while True:
        spans = [(m.group().lower(), m.start(), m.end()) for m in _TOKEN.finditer(text)]
        cut = _first_repeat([word for word, _, _ in spans])
        if cut is None:
            return text
        first_dropped, last_dropped = cut
        text = text[: spans[first_dropped - 1][2]] + text[spans[last_dropped][2] :]


def _first_repeat(words: list[str]) -> tuple[int, int] | None:
    """Token range (first, last inclusive) of the longest immediate repeat, or None."""
    for size in range(len(words) // 2, 0, -1):
        for start in range(len(words) - 2 * size + 1):
            first = words[start : start + size]
            middle = start + size
            if first == words[middle : middle + size]:
                return middle, middle + size - 1
            # "a red door and a red door": single-word repeats around a joiner ("black and
            # black") are too often meant, so only phrases of two or more words collapse here.
            if (
                size >= 2
                and words[middle] in _JOINERS
                and first == words[middle + 1 : middle + 1 + size]
            ):
                return middle, middle + size
    return None


def decoded_caption(text: str | None, prompt: str | None = None) -> str:
    """The caption as the model wrote it, on one line: leftover special tokens and a conditional
    ``prompt`` prefix the model echoes removed, nothing else. This is all ``method: paper`` does."""
    if not text or not text.strip():
        return ""
    text = _SPECIAL_TOKENS.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    if prompt:
        text = _strip_prefix(text, prompt)
    return text


def clean_caption(text: str | None, prompt: str | None = None) -> str:
    """``text`` without captioning artefacts (``captioner.cleanup``, method dnd); ``prompt`` is a
    conditional prefix to remove."""
    text = decoded_caption(text, prompt)
    if not text:
        return ""
    text = _drop_artefacts(text)
    text = _strip_framing(text.strip(" ,:"))
    text = _collapse_repeats(text)
    # Sentence punctuation at either end carries nothing for the summarizer.
    return text.strip(" \t\n.,;:!?-")
