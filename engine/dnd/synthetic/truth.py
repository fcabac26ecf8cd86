"""Ground truth of the planted network: what every neuron of ``planted`` and ``fc`` responds to.

The planted channels were trained (see ``train.py``) to light up, pixel by pixel, on the objects
that match their concepts; ``fc`` outputs one presence logit per vocabulary term. A benchmark
compares the engine's labels with these concepts, normalising both with
:func:`dnd.synthetic.world.parse_phrase`.

Kinds:
- ``color`` / ``shape`` / ``texture``: a single-concept detector.
- ``small_object``: a detector whose concept only ever appears small in the probe, beside two
  large distractors, so whole-image captions miss it and only attention crops show it.
- ``spurious``: a detector of one concept that the probe confounds with another (every red
  object of the probe is a circle); the confounding concept is in ``confounded_with``. Only the
  generated images of step 3, which carry no such bias, can tell the two apart.
- ``polysemantic``: a detector of either of two unrelated concepts (the union of their masks).
- ``class``: an ``fc`` output, the presence of one vocabulary term anywhere in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnd.synthetic.world import COLORS, SHAPES, TEXTURES

#: Module names of the two layers with ground truth.
PLANTED_LAYER = "planted"
CLASS_LAYER = "fc"


@dataclass(frozen=True)
class PlantedNeuron:
    kind: str
    concepts: tuple[str, ...]
    confounded_with: tuple[str, ...] = ()


#: One entry per channel of ``planted``, in channel order. Changing it means retraining.
PLANTED_NEURONS: tuple[PlantedNeuron, ...] = (
    PlantedNeuron("color", ("blue",)),
    PlantedNeuron("color", ("green",)),
    PlantedNeuron("shape", ("triangle",)),
    PlantedNeuron("shape", ("square",)),
    PlantedNeuron("texture", ("checkerboard",)),
    PlantedNeuron("texture", ("vertical stripes",)),
    PlantedNeuron("small_object", ("star",)),
    PlantedNeuron("small_object", ("cross",)),
    PlantedNeuron("small_object", ("purple",)),
    PlantedNeuron("spurious", ("red",), confounded_with=("circle",)),
    PlantedNeuron("spurious", ("circle",), confounded_with=("red",)),
    PlantedNeuron("spurious", ("orange",), confounded_with=("diagonal stripes",)),
    PlantedNeuron("spurious", ("diagonal stripes",), confounded_with=("orange",)),
    PlantedNeuron("polysemantic", ("ring", "yellow")),
    PlantedNeuron("polysemantic", ("white", "horizontal stripes")),
    PlantedNeuron("polysemantic", ("black", "dots")),
)

#: The ``fc`` outputs: every colour, shape and texture except "solid", which nobody names.
FC_CLASSES: tuple[str, ...] = tuple(COLORS) + SHAPES + tuple(t for t in TEXTURES if t != "solid")


def planted_truth() -> dict[str, dict[int, dict]]:
    """``{layer: {neuron: {"kind": ..., "concepts": [...]}}}`` for ``planted`` and ``fc``
    (spurious neurons also carry ``confounded_with``)."""
    planted: dict[int, dict] = {}
    for i, neuron in enumerate(PLANTED_NEURONS):
        entry: dict = {"kind": neuron.kind, "concepts": list(neuron.concepts)}
        if neuron.confounded_with:
            entry["confounded_with"] = list(neuron.confounded_with)
        planted[i] = entry
    fc = {i: {"kind": "class", "concepts": [name]} for i, name in enumerate(FC_CLASSES)}
    return {PLANTED_LAYER: planted, CLASS_LAYER: fc}
