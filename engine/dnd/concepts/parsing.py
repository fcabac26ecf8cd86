"""Turning an LLM reply into one concept label.

The prompts ask for a bare label ("without a period and quotation marks ... do not number your
answer"), yet chat models often wrap it anyway: quotes, a trailing period, "Label: ...", markdown
bold, a bullet, a polite lead-in line, or a sentence of explanation after the label. The label
then becomes a text-to-image prompt and a cache key, so such wrapping must go, while the label's
own words (hyphens, apostrophes, "and", commas between a few items) must stay.

Rules, in the order applied (see ``parse_concept``):

* Replies are read line by line. A line that carries an explicit marker ("Label:", "Concept
  label:", "Answer:", "Concept:", "Human-Identified Similarity:") wins over any other line, since
  the model has told us which part is the answer. Otherwise the first meaningful line is taken:
  empty lines, lead-ins ending in ":" ("Here is a concise label:") and bare courtesies ("Sure!")
  are skipped.
* A refusal ("I'm sorry, ...", "As an AI ...") or a null answer ("None", "N/A", "No common
  concept") met before any label means there is no label: ``None``.
* Within the line: bullets, numbering ("1.", "1)", "(1)"), markdown (``**``, ``__``, backticks,
  headings), straight and curly quotes, trailing periods/commas/colons, a trailing
  parenthetical, and an explanation after the first sentence or after a spaced dash
  ("red scenes - most captions mention red") are removed; "The common theme is ..." lead-ins too.
* Commas: the paper's labels may name a few things ("cages, fences and netting"), so a short
  label keeps its commas. A line longer than ``max_words`` that contains commas is read as
  "label, explanation/enumeration" and cut at the first comma.
* A label still longer than ``max_words`` words (default 12; the summarize prompt asks for 1-5)
  is an explanation, not a label: that line is skipped, and with no better line, ``None``.
* A label must contain at least one letter; "???", "...", "1." and "" give ``None``.

The label's case is kept (acronyms like "DNA" matter); callers compare labels case-folded.
"""

from __future__ import annotations

import re

#: Longest reply, in words, still accepted as a label (the summarize prompt asks for 1-5 words;
#: simplified captions run a little longer).
MAX_LABEL_WORDS = 12

_CODE_FENCE = re.compile(r"```[A-Za-z]*")
_HEADING = re.compile(r"^(?:#{1,6}\s+|>\s+)")
# A bullet needs a following space so "-shaped" or "*" emphasis is not taken for one; a number
# needs "." / ")" / ":" not followed by a digit so "1.5 inch screws" keeps its number.
_BULLET_OR_NUMBER = re.compile(r"^(?:[-*•·‣◦–—+]\s+|\(?\d{1,2}[.):](?!\d)\s*)")
_EMPHASIS = re.compile(r"\*\*|__|~~")
_EDGE_EMPHASIS = re.compile(r"^[*_]+|[*_]+$")
_MARKER = re.compile(
    r"^(?:final\s+|suggested\s+|proposed\s+)?"
    r"(?:human[- ]identified\s+similarity|concept\s+label|concept|label|answer|summary|"
    r"similarity|common\s+(?:concept|theme)|theme)"
    r"(?:\s*:\s*|\s+[-–—]\s+|\s*=\s*)",
    re.IGNORECASE,
)
_COURTESY = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|got it|great)(?:[!,.]+\s*|\s*$)"
    r"|^here(?:'s|’s| is| are)\b[^:]*:\s*",
    re.IGNORECASE,
)
_LEAD_IN = re.compile(
    r"^(?:the\s+)?(?:(?:common|main|shared|overall|central|key|best)\s+)?"
    r"(?:conceptual\s+|concept\s+)?(?:label|concept|theme|similarity|similarities|answer)\b"
    r"[^:]{0,40}?\s+(?:is|are|would\s+be|could\s+be)\s*:?\s+",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"^(?:i'?m sorry|i’m sorry|sorry\b|i apologi[sz]e|i cannot|i can'?t|i can’t|i am unable|"
    r"i'?m unable|i’m unable|as an ai\b|unfortunately\b|there (?:is|are) no (?:common|clear|"
    r"shared))",
    re.IGNORECASE,
)
_NULL_ANSWERS = frozenset(
    {
        "none", "n/a", "na", "null", "nil", "unknown", "nothing", "empty", "not applicable",
        "no concept", "no label", "no similarity", "no similarities", "no common concept",
        "no common theme", "no common similarity", "no clear concept", "various", "misc",
    }
)
# Quotes that never belong to a label are stripped from either end on their own; single quotes
# double as apostrophes ("dogs'"), so they go only in pairs.
_DOUBLE_QUOTES = "\"“”„«»`"
_SINGLE_QUOTES = "'‘’"
_TRAILING_PUNCT = ".!,;"
_TRAILING_PARENTHETICAL = re.compile(r"\s*[(\[][^()\[\]]*[)\]]\s*$")
# End of a first sentence: ". " after two lowercase letters or digits, so "St. Bernard" stays.
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)]{2})[.!?]\s+(?=\S)")
_SPACED_DASH = re.compile(r"\s+[-–—]\s+|\s*—\s*")
_MID_COLON = re.compile(r":\s+")

_EMPTY, _SKIP, _REFUSED, _LABEL = "empty", "skip", "refused", "label"


def parse_concept(reply: str | None, *, max_words: int = MAX_LABEL_WORDS) -> str | None:
    """The concept label in an LLM ``reply``, or ``None`` when it holds none (rules above)."""
    if not isinstance(reply, str):
        return None
    text = _CODE_FENCE.sub("\n", reply.replace("\r", "\n"))
    lines = [_read_line(line, max_words) for line in text.split("\n")]

    for kind, label, marked in lines:
        if kind == _LABEL and marked:
            return label
    for kind, label, _ in lines:
        if kind == _LABEL:
            return label
        if kind == _REFUSED:
            return None
    return None


def _read_line(line: str, max_words: int) -> tuple[str, str | None, bool]:
    """(kind, label, marked) for one reply line; ``marked`` is True when a "Label:" marker named
    the answer."""
    text = " ".join(line.split())
    if not text:
        return _EMPTY, None, False

    marked = False
    previous = None
    # Wrappers nest in any order ("1. **Label:** 'x'."), so peel until nothing changes.
    while text != previous:
        previous = text
        text = _HEADING.sub("", text)
        text = _BULLET_OR_NUMBER.sub("", text)
        text = _EMPHASIS.sub("", text)
        text = _EDGE_EMPHASIS.sub("", text)
        text = _COURTESY.sub("", text)
        text = _strip_quotes(text)
        stripped = _MARKER.sub("", text)
        if stripped != text:
            marked = True
            text = stripped
        text = _LEAD_IN.sub("", text)
        text = text.strip()

    if not text:
        # A marker or lead-in alone ("Concept label:") announces the answer on the next line.
        return _SKIP, None, False
    if _REFUSAL.match(text):
        return _REFUSED, None, marked
    if text.endswith(":"):
        return _SKIP, None, False

    text = _first_part(text, max_words)
    if not any(ch.isalpha() for ch in text):
        return _EMPTY, None, False
    if text.casefold() in _NULL_ANSWERS:
        return _REFUSED, None, marked
    if len(text.split()) > max_words:
        return _SKIP, None, False
    return _LABEL, text, marked


def _first_part(text: str, max_words: int) -> str:
    """The label without an explanation appended after it."""
    text = _SENTENCE_END.split(text, maxsplit=1)[0]
    text = _strip_quotes(text)
    text = _SPACED_DASH.split(text, maxsplit=1)[0] or text
    text = _MID_COLON.split(text, maxsplit=1)[0] or text
    text = _TRAILING_PARENTHETICAL.sub("", text) or text
    text = _strip_quotes(text)
    if len(text.split()) > max_words and ("," in text or ";" in text):
        text = _strip_quotes(re.split(r"[,;]", text, maxsplit=1)[0])
    return " ".join(text.split())


def _strip_quotes(text: str) -> str:
    """Remove surrounding quotes and trailing punctuation, in whatever nesting ('"x".' or "x.")."""
    previous = None
    while text != previous:
        previous = text
        text = text.strip()
        text = text.rstrip(_TRAILING_PUNCT).rstrip()
        text = text.strip(_DOUBLE_QUOTES)
        if len(text) >= 2 and text[0] in _SINGLE_QUOTES and text[-1] in _SINGLE_QUOTES:
            text = text[1:-1]
    return text
