"""One generation job per distinct candidate concept across the whole network.

Neurons of one layer often receive the same candidate concept ("stripes", "Red circle" /
"red circle"); generating Q images for each copy would multiply the costliest stage of Step 3.
:func:`unique_concepts` maps every neuron's candidates onto one shared list so each concept is
generated once and its images are reused by every neuron that proposed it.
"""

from __future__ import annotations

from collections.abc import Sequence

from dnd.errors import ConfigError


def normalise_whitespace(text: str) -> str:
    """``text`` with leading/trailing whitespace removed and inner runs collapsed to one space:
    the spelling kept for a concept, as the LLM wrote it but without layout noise."""
    return " ".join(text.split())


def concept_key(text: str) -> str:
    """The identity of a candidate concept for generation: whitespace collapsed and case-folded.

    Case is folded because the text-to-image prompt encoder (CLIP's tokenizer in Stable
    Diffusion) lowercases its input, so "Red circle" and "red circle" yield the same prompt
    embedding and, with fixed seeds, the same images; generating both would be wasted work.
    ``casefold`` rather than ``lower`` so that e.g. German "ß"/"SS" spellings also meet.
    """
    return normalise_whitespace(text).casefold()


def unique_concepts(candidates_per_neuron: Sequence[Sequence[str]]) -> tuple[list[str], list[list[int]]]:
    """Deduplicate candidate concepts across all neurons.

    Returns ``(unique, index)``: ``unique`` lists each distinct concept once, in first-seen order,
    spelled as first seen with whitespace normalised (case kept — only the *key* is case-folded);
    ``index[n][j]`` is the position in ``unique`` of neuron n's candidate j, so
    ``unique[index[n][j]]`` is the concept whose generated images neuron n uses for candidate j.

    Raises ConfigError for a candidate that is not a string or is blank, naming its neuron and
    position, because a blank prompt would generate images of nothing in particular.
    """
    if isinstance(candidates_per_neuron, (str, bytes)) or not isinstance(candidates_per_neuron, Sequence):
        raise ConfigError(
            f"candidates_per_neuron must be a list (one list of candidate concepts per neuron); "
            f"got {type(candidates_per_neuron).__name__}"
        )
    unique: list[str] = []
    position_of: dict[str, int] = {}
    index: list[list[int]] = []
    for n, candidates in enumerate(candidates_per_neuron):
        if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
            raise ConfigError(
                f"candidates_per_neuron[{n}] must be a list of candidate concept strings; got {candidates!r}"
            )
        positions: list[int] = []
        for j, concept in enumerate(candidates):
            if not isinstance(concept, str) or not concept.strip():
                raise ConfigError(
                    f"candidate concept {j} of neuron entry {n} must be a non-blank string; got {concept!r}"
                )
            key = concept_key(concept)
            if key not in position_of:
                position_of[key] = len(unique)
                unique.append(normalise_whitespace(concept))
            positions.append(position_of[key])
        index.append(positions)
    return unique, index
