"""Concept sets S for describers that choose among fixed words (CLIP-Dissect).

A set is named ``NAME[:ARGUMENT]`` in the config (``clip_dissect.concept_set``):
- ``english[:N]``: the N most frequent English words (default 20,000, as the CLIP-Dissect paper
  uses), from the ``wordfreq`` package, which ships its frequency data (Wikipedia, subtitles, news,
  books, web text) so the list needs no download; install it with ``pip install wordfreq``;
- ``file:PATH``: one concept a line (local path or fsspec URI);
- ``planted[:N]``: the demo world's vocabulary plus N distractor words (registered by the world).
"""

from __future__ import annotations

from typing import Callable

from dnd.errors import ConfigError
from dnd.registry import Registry

CONCEPT_SETS: Registry[Callable[[str], list[str]]] = Registry("concept set")


def load_concept_set(spec: str) -> list[str]:
    """The concepts ``spec`` names, without blanks or repeats, in their first order."""
    from dnd.backends import load_backends

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a concept set is named like english:20000, file:PATH or planted; got {spec!r}")
    load_backends()
    name, _, argument = spec.strip().partition(":")
    concepts = CONCEPT_SETS.get(name)(argument)
    seen: dict[str, None] = {}
    for concept in concepts:
        text = " ".join(str(concept).split())
        if text:
            seen.setdefault(text, None)
    if not seen:
        raise ConfigError(f"concept set {spec!r} is empty")
    return list(seen)


@CONCEPT_SETS.register("file")
def from_file(path: str) -> list[str]:
    from dnd.store.fs import read_bytes

    if not path:
        raise ConfigError("concept set file: needs a path, e.g. file:/data/concepts.txt")
    try:
        text = read_bytes(path).decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"concept set file {path!r} does not exist") from None
    return text.splitlines()


@CONCEPT_SETS.register("english")
def most_frequent_english(argument: str) -> list[str]:
    try:
        n = int(argument) if argument else 20_000
    except ValueError:
        raise ConfigError(f"concept set english:N needs a whole number N, got {argument!r}") from None
    if n < 1:
        raise ConfigError(f"concept set english:N needs N >= 1, got {n}")
    try:
        from wordfreq import top_n_list
    except ImportError:
        raise ConfigError("concept set english needs the wordfreq package, which ships English word frequencies: "
                          "pip install wordfreq (or name a file: file:PATH)") from None
    # Words of letters only: numbers and punctuation tokens describe no neuron.
    words = [w for w in top_n_list("en", n * 2) if w.isalpha()]
    return words[:n]
