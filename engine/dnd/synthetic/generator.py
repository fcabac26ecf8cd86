"""The ``synthetic`` generator: renders candidate concepts in the planted world (step 3).

It plays Stable Diffusion's part in `dnd demo`. A prompt arrives templated ("One realistic image
of red circle"); the world's phrase reader ignores the template's words, so the concept is read
from the whole prompt. Everything the concept leaves open (position, size, other attributes, the
background) is drawn from the seed, without the probe's planted biases — which is what lets
step 3 tell a red detector from a circle detector. A concept outside the vocabulary is refused
with the reason instead of being drawn as something else.
"""

from __future__ import annotations

import numpy as np

from dnd.errors import ConfigError
from dnd.generation.base import GENERATORS, PROMPT_TEMPLATE, Generated
from dnd.synthetic.world import SIZE, concept_scene, read_phrase, render

GENERATOR_VERSION = "2"

_TEMPLATE_PREFIX = PROMPT_TEMPLATE.split("{}")[0]


def _concept_text(prompt: str) -> str:
    """The concept part of a templated prompt, for messages ("xyz" of "One realistic image of xyz")."""
    if prompt.lower().startswith(_TEMPLATE_PREFIX.lower()):
        return prompt[len(_TEMPLATE_PREFIX):].strip()
    return prompt.strip()


@GENERATORS.register("synthetic")
class SyntheticGenerator:
    """Renders (prompt, seed) requests; the same request always yields the same pixels."""

    def __init__(self, size: int = SIZE):
        if not isinstance(size, int) or isinstance(size, bool) or size < 16:
            raise ConfigError(f"synthetic generator size must be an integer of at least 16 px, got {size!r}")
        self.size = size
        self.cache_key = f"synthetic-generate|v{GENERATOR_VERSION}|size={size}"

    def generate_one(self, prompt: str, seed: int) -> Generated:
        if not isinstance(prompt, str):
            return Generated(None, refused=f"prompt must be a string, got {type(prompt).__name__}")
        reading = read_phrase(prompt)
        if reading.concept is None:
            return Generated(None, refused=f"cannot render {_concept_text(prompt)!r}: {reading.reason}")
        rng = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF)
        return Generated(render(concept_scene(reading.concept, rng), self.size).pil())

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Generated]:
        if len(prompts) != len(seeds):
            raise ConfigError(f"generate needs one seed per prompt; got {len(prompts)} prompts and {len(seeds)} seeds")
        return [self.generate_one(p, s) for p, s in zip(prompts, seeds)]
