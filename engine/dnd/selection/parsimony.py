"""Step 3, after scoring: prefer the simplest candidate concept that the neuron's activations support.

The scoring functions of paper A.1.4 reward a candidate whose generated images look like the
neuron's top images (Image Products) and rank high (TopK Squared). Both favour a *compound*
candidate over the single concept inside it: for a neuron that detects red, "red circle" images
are as red as "red" images and look more like a probe in which red things are circles. Nothing
in the scores asks whether the extra words matter to the neuron. This module asks it, with the
activations Step 3 already has:

* A candidate is **nested** in another when its content words are a strict subset of the other's
  ("red" in "red circle"; "striped" in "diagonally striped").
* The neuron is measured by its **peak**, the maximum of its activation map on the image (the
  value itself for a layer without maps), not by the run's spatial-mean summary: the mean grows
  with the drawn object's area, so "red" images, whose shape is often smaller than a circle, kept
  only about half of "red circle"'s mean and sat at the threshold, while their peaks keep all of it.
* A candidate's **lift** on an image is its peak above the neuron's floor on Step 3's images:
  the mean peak on the least related concept it was shown (the label's own sub-phrases, generated
  for this test, usually include one: "circle" for "red circle").
* Step 3 draws every concept's i-th image from the same seed, so image i of "red" and image i of
  "red circle" share their layout. The **share** of a nested candidate is the lower quartile, over
  such pairs, of its image's lift divided by the label's: the sub-phrase must keep the label's
  lift on three pairs in four, not on the median one. For a red detector, "red" images keep all
  of "red circle"'s lift; "circle" images are red one time in eight and keep nothing. "Striped"
  for a horizontal-stripes detector is drawn horizontal one time in three: on ten images the
  median pair kept the lift about one time in five (five or more horizontal draws), the lower
  quartile almost never (eight or more). A true conjunction ("orange diagonally striped"
  detector) keeps little in either part and stays. The selected label gives way to a nested
  candidate whose share is at least ``min_share``.

Lifts also decide which other candidates join the multiple labels of appendix A.7: a candidate
is a label of its own only when its mean lift is at least ``min_share`` of the label's, and it is
not a nested form (subset or superset) of a label already kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from dnd.errors import ConfigError

#: Words that carry no concept in a candidate phrase: articles, joiners and the generic nouns an
#: LLM or a captioner adds ("a red object", "images of circles").
FILLER_WORDS = frozenset(
    """
    a an the of with on in and or at to for by from its it is are this that these those some
    several few many various one two three image images picture pictures photo photos object objects
    thing things item items shape shapes pattern patterns surface surfaces
    """.split()
)

_WORD = re.compile(r"[a-z]+")


def _singular(word: str) -> str:
    # A crude singular, enough to meet "circle"/"circles" and "stripe"/"stripes" without a lemmatiser;
    # words like "glass" keep their double s, and both sides of a comparison go through it.
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def concept_words(text: str) -> frozenset[str]:
    """The content words of a candidate concept, lower-cased and singular, without filler."""
    if not isinstance(text, str):
        raise ConfigError(f"a candidate concept must be a string; got {text!r}")
    return frozenset(_singular(w) for w in _WORD.findall(text.casefold()) if w not in FILLER_WORDS)


def nested(inner: frozenset[str], outer: frozenset[str]) -> bool:
    """Whether ``inner`` names strictly less than ``outer`` and nothing else (both non-empty)."""
    return bool(inner) and inner < outer


def lifts(activations: Sequence[np.ndarray], baseline: float) -> np.ndarray:
    """Each candidate's mean generated-image activation minus ``baseline`` (NaN entries, refused
    images, are left out); NaN without images."""
    out = np.full(len(activations), np.nan)
    for j, values in enumerate(activations):
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size:
            out[j] = float(values.mean()) - baseline
    return out


def paired_share(label: np.ndarray, other: np.ndarray, baseline: float) -> float:
    """Lower quartile (linear interpolation) over image pairs (same index, same seed) of ``other``'s
    lift over ``label``'s, on the pairs where both images exist and the label's image lifts the
    neuron; NaN without such pairs."""
    a = np.asarray(label, dtype=np.float64).ravel() - baseline
    b = np.asarray(other, dtype=np.float64).ravel() - baseline
    n = min(a.size, b.size)
    a, b = a[:n], b[:n]
    usable = np.isfinite(a) & np.isfinite(b) & (a > 0)
    if not usable.any():
        return float("nan")
    return float(np.percentile(b[usable] / a[usable], 25))


def sub_phrases(label: str, limit: int = 8) -> list[str]:
    """The shorter phrases inside ``label`` that Step 3 generates to test whether every word is
    needed: contiguous runs of its words that neither start nor end with a stopword ("white",
    "checkered square" of "white checkered square"), fewest words first, at most ``limit``."""
    from dnd.phrases import candidate_phrases, words

    whole = concept_words(label)
    phrases = [p for p in candidate_phrases(label, max(1, len(words(label)) - 1)) if concept_words(p) < whole]
    return sorted(phrases, key=lambda p: len(p.split()))[:limit]


def _check_share(value: object, name: str) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not 0.0 < float(value) <= 1.0:
        raise ConfigError(f"{name} must be a number in (0, 1] (a share of the label's lift), or null to switch it off; got {value!r}")
    return float(value)


def _check(candidates: Sequence[str], activations: Sequence[np.ndarray], baseline: float) -> None:
    if len(activations) != len(candidates):
        raise ConfigError(f"activations must hold one array per candidate concept ({len(candidates)}); got {len(activations)}")
    if not isinstance(baseline, (int, float, np.integer, np.floating)) or isinstance(baseline, bool):
        raise ConfigError(f"baseline must be the neuron's floor on Step 3's images (a number); got {baseline!r}")


def simplest_sufficient(
    candidates: Sequence[str], best: int, activations: Sequence[np.ndarray], baseline: float, min_share: float = 0.5,
) -> tuple[int, float | None]:
    """The candidate to report instead of ``candidates[best]``, and its share of the label's lift.

    ``activations[j][i]`` is the neuron's peak on candidate j's i-th generated image (NaN where it
    was refused) and ``baseline`` the neuron's floor (module doc). Among the
    candidates nested in the selected one whose :func:`paired_share` is at least ``min_share``, the
    one with the fewest content words wins (ties: the larger share, then the earlier candidate).
    Returns ``(best, None)`` when none qualifies or when ``baseline`` is NaN.
    """
    min_share = _check_share(min_share, "parsimony_share")
    _check(candidates, activations, baseline)
    if not np.isfinite(baseline):
        return best, None
    words = [concept_words(c) for c in candidates]
    choice, choice_key, choice_share = best, None, None
    for j in range(len(candidates)):
        if j == best or not nested(words[j], words[best]):
            continue
        share = paired_share(activations[best], activations[j], float(baseline))
        if not np.isfinite(share) or share < min_share:
            continue
        key = (len(words[j]), -share, j)
        if choice_key is None or key < choice_key:
            choice, choice_key, choice_share = j, key, share
    return choice, choice_share


def supported_labels(
    candidates: Sequence[str],
    order: Sequence[int],
    activations: Sequence[np.ndarray],
    baseline: float,
    min_share: float = 0.5,
) -> list[int]:
    """Filter A.7's multiple labels (``order``: candidate indices, label first) down to concepts the
    neuron responds to in their own right.

    The first entry is the label and always stays. A later candidate stays when its lift is at
    least ``min_share`` of the label's and its words are neither a subset nor a superset of a kept
    label's: "red circle" beside "red" says nothing new, and "red" beside "red circle" would have
    replaced it already if it were enough. With a NaN baseline or a label that does not lift the
    neuron there is no yardstick, and only the label stays.
    """
    min_share = _check_share(min_share, "multilabel_share")
    _check(candidates, activations, baseline)
    if not order:
        return []
    lift = lifts(activations, float(baseline))
    words = [concept_words(c) for c in candidates]
    first = order[0]
    kept = [first]
    if not np.isfinite(lift[first]) or lift[first] <= 0:
        return kept
    for j in order[1:]:
        if any(words[j] <= words[k] or words[k] <= words[j] for k in kept):
            continue
        if not np.isfinite(lift[j]) or lift[j] < min_share * lift[first]:
            continue
        kept.append(j)
    return kept
