"""Concept source ``planted``: the demo world's truth, for benchmarks and tests.

A probe image of ``gen://planted?...`` is scene i of its seed, so which objects it holds is known
exactly. An explanation is present in an image when some object has every attribute the phrase
names (and the background, where it names one), read with :func:`dnd.synthetic.world.parse_phrase`;
a phrase outside the world's vocabulary is present nowhere, and its scores are undefined.
"""

from __future__ import annotations

import numpy as np

from dnd.errors import ConfigError
from dnd.faithfulness.sources import CONCEPT_SOURCES, ConceptVectors, ProbeImages, ScoringContext


def _scene_of(ref: str):
    from dnd.probe.generated import SCHEME, parse_generated
    from dnd.synthetic.world import probe_scene

    uri, _, index = ref.rpartition("#i=")
    if not ref.startswith(SCHEME) or not index.isdigit() or parse_generated(uri)[0] != "planted":
        raise ConfigError(f"concepts planted knows only the planted probe (gen://planted?...); image {ref!r} is not one of it")
    _, _, seed, _ = parse_generated(uri)
    return probe_scene(seed, int(index))


def present_in(concept, scene) -> bool:
    if concept.background is not None and scene.background != concept.background:
        return False
    if not concept.names_object:
        return True
    return any(concept.matches(obj) for obj in scene.objects)


@CONCEPT_SOURCES.register("planted")
class PlantedSource:
    def vectors(self, explanations: list[str], images: ProbeImages, context: ScoringContext) -> ConceptVectors:
        from dnd.synthetic.world import parse_phrase

        scenes = [_scene_of(ref) for ref in images.refs]
        present = np.zeros((len(explanations), len(scenes)), dtype=bool)
        outside = 0
        for t, text in enumerate(explanations):
            concept = parse_phrase(text)
            if concept is None:
                outside += 1
                continue
            present[t] = [present_in(concept, scene) for scene in scenes]
        return ConceptVectors(present.astype(np.float32), present, notes={"outside_vocabulary": outside})


def _distractors(n: int) -> list[str]:
    """``n`` pronounceable words outside the world's vocabulary, the same on every call."""
    import numpy as np

    from dnd.synthetic.world import parse_phrase

    rng = np.random.default_rng(0)
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["", "n", "r", "l", "m", "t"]
    words: dict[str, None] = {}
    while len(words) < n:
        word = "".join(rng.choice(list(onsets)) + rng.choice(list(vowels)) for _ in range(rng.integers(2, 4)))
        word += str(rng.choice(codas))
        if parse_phrase(word) is None:
            words.setdefault(word, None)
    return list(words)


def planted_concept_set(argument: str) -> list[str]:
    """The world's vocabulary (every colour, shape and texture a neuron can detect) plus N distractors."""
    from dnd.synthetic.truth import FC_CLASSES

    try:
        n = int(argument) if argument else 0
    except ValueError:
        raise ConfigError(f"concept set planted:N needs a whole number of distractors, got {argument!r}") from None
    return list(FC_CLASSES) + _distractors(n)


def _register_concept_set() -> None:
    from dnd.methods.concept_sets import CONCEPT_SETS

    CONCEPT_SETS.register("planted")(planted_concept_set)


_register_concept_set()
