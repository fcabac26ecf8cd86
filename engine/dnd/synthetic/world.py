"""The planted-concept world: its vocabulary, a seeded scene sampler and a procedural renderer.

Everything `dnd demo` knows about "ground truth" comes from here. A scene is a few flat objects
(a shape, a colour, a texture, a size) on a neutral background. The engine only ever sees the
rendered pixels; the metadata that says what is where is written beside the probe images for the
benchmark and for training the planted network, never into the probe folder itself.

The vocabulary lives in :data:`VOCABULARY` (and the words that name it in :data:`LEXICON`) so that
the renderer, the captioner, the generator, the planted network and the benchmark all normalise
phrases the same way.

Geometry is expressed relative to the canvas (an object's diameter is a fraction of the side), so
a scene rendered at 96 px and the same scene at 256 px differ only in resolution; textures scale
too, so a generator image resized to the network's input keeps its stripes instead of aliasing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from dnd.errors import DndError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: Side of a scene in pixels, and the planted network's input size.
SIZE = 96

# ---------------------------------------------------------------------------------------------
# Vocabulary

#: Object colours (RGB). Chosen far apart in hue or lightness so that naming them is unambiguous,
#: and all far from the neutral mid-gray backgrounds so that objects separate from the ground.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 50),
    "blue": (40, 75, 220),
    "yellow": (240, 215, 40),
    "purple": (135, 50, 175),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")

#: "solid" is a texture of the world (most objects have one) but not something people name.
TEXTURES: tuple[str, ...] = (
    "solid",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
    "dots",
)
STRIPE_TEXTURES: tuple[str, ...] = ("horizontal stripes", "vertical stripes", "diagonal stripes")
#: The concept "striped" without an orientation: any of the three stripe textures.
ANY_STRIPES = "stripes"

#: Backgrounds, all neutral gray so that every object colour stands out: "gray" is plain.
BACKGROUNDS: tuple[str, ...] = ("gray", "noisy", "gradient")

#: Size categories; an object is "small" when its diameter is under SMALL_LIMIT of the side.
SIZES: tuple[str, ...] = ("small", "large")
SMALL_DIAMETER = (0.105, 0.17)
LARGE_DIAMETER = (0.27, 0.46)
SMALL_LIMIT = 0.22

VOCABULARY: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "texture": TEXTURES + (ANY_STRIPES,),
    "size": SIZES,
    "background": BACKGROUNDS,
}

#: The adjective a caption uses for each texture (solid objects get none, as people say "a red
#: circle", not "a solid red circle").
TEXTURE_ADJECTIVES: dict[str, str] = {
    "solid": "",
    "horizontal stripes": "horizontally striped",
    "vertical stripes": "vertically striped",
    "diagonal stripes": "diagonally striped",
    "checkerboard": "checkered",
    "dots": "dotted",
    ANY_STRIPES: "striped",
}

# Words that name the vocabulary, as (attribute, value). Orientation words are kept apart because
# they only mean something together with stripes ("horizontal" alone is read as horizontal stripes).
LEXICON: dict[str, tuple[str, str]] = {
    **{name: ("color", name) for name in COLORS},
    "violet": ("color", "purple"),
    **{name: ("shape", name) for name in SHAPES},
    "disc": ("shape", "circle"),
    "disk": ("shape", "circle"),
    "donut": ("shape", "ring"),
    "doughnut": ("shape", "ring"),
    "annulus": ("shape", "ring"),
    "plus": ("shape", "cross"),
    "checkerboard": ("texture", "checkerboard"),
    "checkered": ("texture", "checkerboard"),
    "chequered": ("texture", "checkerboard"),
    "checked": ("texture", "checkerboard"),
    "checker": ("texture", "checkerboard"),
    "checkers": ("texture", "checkerboard"),
    "checks": ("texture", "checkerboard"),
    "dot": ("texture", "dots"),
    "dots": ("texture", "dots"),
    "dotted": ("texture", "dots"),
    "spotted": ("texture", "dots"),
    "spots": ("texture", "dots"),
    "polka": ("texture", "dots"),
    "solid": ("texture", "solid"),
    "plain": ("texture", "solid"),
    "striped": ("stripes", ANY_STRIPES),
    "stripes": ("stripes", ANY_STRIPES),
    "stripe": ("stripes", ANY_STRIPES),
    "stripy": ("stripes", ANY_STRIPES),
    "horizontal": ("orientation", "horizontal stripes"),
    "horizontally": ("orientation", "horizontal stripes"),
    "vertical": ("orientation", "vertical stripes"),
    "vertically": ("orientation", "vertical stripes"),
    "diagonal": ("orientation", "diagonal stripes"),
    "diagonally": ("orientation", "diagonal stripes"),
    "small": ("size", "small"),
    "tiny": ("size", "small"),
    "little": ("size", "small"),
    "large": ("size", "large"),
    "big": ("size", "large"),
    "gray": ("background", "gray"),
    "grey": ("background", "gray"),
    "noisy": ("background", "noisy"),
    "noise": ("background", "noisy"),
    "grainy": ("background", "noisy"),
    "gradient": ("background", "gradient"),
}

#: Words that carry no concept: the prompt template, articles, joiners, and generic nouns.
FILLER: frozenset[str] = frozenset(
    """
    one two three a an the of with on in and or at its it is are this that some several few
    realistic image images picture pictures photo photos photograph render rendering
    background backgrounds object objects shape shapes thing things item items pattern patterns
    patterned texture textures textured color colour colors colours colored coloured shaped
    close up surface surfaces
    """.split()
)


# ---------------------------------------------------------------------------------------------
# Concepts and phrases


@dataclass(frozen=True)
class Concept:
    """What a phrase of the world's vocabulary asks for; None means "any"."""

    color: str | None = None
    shape: str | None = None
    texture: str | None = None  # one of TEXTURES, or ANY_STRIPES
    size: str | None = None
    background: str | None = None

    @property
    def is_empty(self) -> bool:
        return all(v is None for v in asdict(self).values())

    @property
    def names_object(self) -> bool:
        return any(v is not None for v in (self.color, self.shape, self.texture, self.size))

    def matches(self, obj: "SceneObject") -> bool:
        """Whether an object has every object attribute the concept names (background ignored)."""
        if self.color is not None and obj.color != self.color:
            return False
        if self.shape is not None and obj.shape != self.shape:
            return False
        if self.texture is not None:
            if self.texture == ANY_STRIPES:
                if obj.texture not in STRIPE_TEXTURES:
                    return False
            elif obj.texture != self.texture:
                return False
        if self.size is not None and obj.size != self.size:
            return False
        return True

    @property
    def terms(self) -> tuple[str, ...]:
        """The canonical vocabulary terms the concept names, e.g. ("red", "vertical stripes", "circle")."""
        return tuple(
            v for v in (self.size, self.color, self.texture, self.shape, self.background) if v is not None
        )

    @property
    def phrase(self) -> str:
        """A canonical phrase, e.g. "small red vertically striped circle on a noisy background"."""
        words = [self.size, self.color]
        if self.texture is not None:
            adjective = TEXTURE_ADJECTIVES[self.texture] or "solid"
            words.append(adjective)
        words.append(self.shape if self.shape is not None else ("object" if self.names_object else None))
        text = " ".join(w for w in words if w)
        if self.background is not None:
            text = f"{text} on a {self.background} background" if text else f"{self.background} background"
        return text


@dataclass(frozen=True)
class PhraseReading:
    """The outcome of reading a phrase: a concept, or the reason there is none."""

    text: str
    concept: Concept | None
    unknown_words: tuple[str, ...] = ()
    reason: str | None = None


_WORD = re.compile(r"[a-z]+")


def _lemma(word: str) -> str | None:
    """The vocabulary or filler word behind a word, undoing English plurals ("crosses" → "cross")."""
    if word in LEXICON or word in FILLER:
        return word
    for suffix, repl in (("es", ""), ("s", ""), ("ies", "y")):
        if word.endswith(suffix):
            stem = word[: -len(suffix)] + repl
            if stem in LEXICON or stem in FILLER:
                return stem
    return None


def read_phrase(text: str) -> PhraseReading:
    """Read a phrase of the world's vocabulary ("blue checkered triangle", "One realistic image of
    small stars"); unknown content words or contradictions ("red blue circle") give no concept."""
    if not isinstance(text, str):
        raise DndError(f"a phrase must be a string, got {type(text).__name__}: {text!r}")
    words = _WORD.findall(text.lower())
    attrs: dict[str, set[str]] = {}
    unknown: list[str] = []
    for word in words:
        lemma = _lemma(word)
        if lemma is None:
            unknown.append(word)
            continue
        if lemma in FILLER:
            continue
        kind, value = LEXICON[lemma]
        attrs.setdefault(kind, set()).add(value)
    if unknown:
        return PhraseReading(text, None, tuple(unknown), f"unknown words {unknown}")

    # Stripes and an orientation combine; an orientation alone still means stripes.
    orientations = attrs.pop("orientation", set())
    stripes = attrs.pop("stripes", set())
    textures = attrs.setdefault("texture", set())
    if orientations:
        textures |= orientations
    elif stripes:
        textures.add(ANY_STRIPES)
    if not textures:
        del attrs["texture"]

    chosen: dict[str, str] = {}
    for kind, values in attrs.items():
        if len(values) > 1:
            return PhraseReading(
                text, None, (), f"contradictory {kind}s {sorted(values)}: one object has one {kind}"
            )
        chosen[kind] = next(iter(values))
    concept = Concept(**chosen)
    if concept.is_empty:
        return PhraseReading(
            text, None, (), "no word of the world's vocabulary (a colour, shape, texture, size or background)"
        )
    return PhraseReading(text, concept)


def parse_phrase(text: str) -> Concept | None:
    """The concept a phrase names, or None when it has unknown words, contradicts itself, or is empty."""
    return read_phrase(text).concept


def normalise_label(text: str) -> str | None:
    """The canonical phrase of a label, or None when it is outside the vocabulary."""
    concept = parse_phrase(text)
    return concept.phrase if concept is not None else None


# ---------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene. Geometry is relative to the canvas side (0..1)."""

    shape: str
    color: str
    texture: str
    size: str  # "small" | "large"
    diameter: float
    center: tuple[float, float]
    angle: float  # degrees
    rgb: tuple[int, int, int]  # the colour after the object's own jitter

    def bbox(self, side: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels of a ``side``-px canvas, x1/y1 exclusive, clipped to the canvas."""
        r = self.diameter / 2 * side
        cx, cy = self.center[0] * side, self.center[1] * side
        return (
            max(0, int(math.floor(cx - r))),
            max(0, int(math.floor(cy - r))),
            min(side, int(math.ceil(cx + r))),
            min(side, int(math.ceil(cy + r))),
        )


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]
    #: Seeds the background noise, gradient direction and texture phases, so a Scene alone
    #: determines its pixels.
    render_seed: int

    def metadata(self, side: int) -> dict:
        return {
            "background": self.background,
            "objects": [
                {
                    "shape": o.shape,
                    "color": o.color,
                    "texture": o.texture,
                    "size": o.size,
                    "diameter_px": round(o.diameter * side, 2),
                    "center_px": [round(o.center[0] * side, 2), round(o.center[1] * side, 2)],
                    "angle": round(o.angle, 2),
                    "bbox": list(o.bbox(side)),
                }
                for o in self.objects
            ],
        }


@dataclass(frozen=True)
class SceneDesign:
    """How scenes are drawn: the training distribution, or the probe with its planted biases."""

    name: str
    min_objects: int = 1
    max_objects: int = 4
    p_small: float = 0.4
    #: Planted correlations of the probe: every red object is a circle and most circles are red;
    #: every orange object has diagonal stripes and most diagonal stripes are orange.
    spurious: bool = False
    #: Concepts that in the probe only ever appear small, beside two large distractors, so that a
    #: whole-image caption (which names the largest objects) misses them and only crops show them.
    small_only: tuple[str, ...] = ()
    texture_weights: tuple[float, ...] = field(default=(1.0,) * len(TEXTURES))


TRAINING = SceneDesign("training")
#: Share of circles that are red in the spurious probe, and of diagonal stripes that are orange.
SPURIOUS_SHARE = 0.75
SMALL_ONLY = ("star", "cross", "purple")
PROBE = SceneDesign(
    "probe",
    min_objects=1,
    max_objects=3,
    p_small=0.3,
    spurious=True,
    small_only=SMALL_ONLY,
    # Solid objects are the commonest in the probe, as plain things are in photographs.
    texture_weights=(2.5, 1.0, 1.0, 1.0, 1.0, 1.0),
)
PROBE_UNBIASED = replace(PROBE, name="probe-unbiased", spurious=False, small_only=())


def _choice(rng: np.random.Generator, options: Sequence[str], weights: Sequence[float] | None = None) -> str:
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _jitter_rgb(color: str, rng: np.random.Generator) -> tuple[int, int, int]:
    base = np.asarray(COLORS[color], dtype=np.int64)
    return tuple(int(v) for v in np.clip(base + rng.integers(-10, 11, size=3), 0, 255))


def _small_only_concepts(design: SceneDesign) -> list[Concept]:
    return [parse_phrase(c) for c in design.small_only]  # type: ignore[misc]


def _sample_attributes(
    rng: np.random.Generator,
    design: SceneDesign,
    concept: Concept,
    size: str,
    forbidden: Sequence[Concept] = (),
) -> tuple[str, str, str]:
    """Shape, colour and texture for one object: fixed where ``concept`` names them, drawn from the
    design's distribution otherwise, never matching a ``forbidden`` concept."""
    for _ in range(200):
        shape = concept.shape or _choice(rng, SHAPES)
        if concept.color is not None:
            color = concept.color
        elif design.spurious and shape == "circle":
            color = "red" if rng.random() < SPURIOUS_SHARE else _choice(rng, [c for c in COLORS if c != "red"])
        elif design.spurious:
            color = _choice(rng, [c for c in COLORS if c != "red"])
        else:
            color = _choice(rng, tuple(COLORS))
        if concept.texture is not None and concept.texture != ANY_STRIPES:
            texture = concept.texture
        elif concept.texture == ANY_STRIPES:
            texture = _choice(rng, STRIPE_TEXTURES)
        elif size == "small":
            # A texture needs a few periods to be seen; on a small object it would be noise to a
            # captioner and contradictory supervision to a texture neuron. Small things are solid
            # unless a phrase asks otherwise.
            texture = "solid"
        elif design.spurious and color == "orange":
            texture = "diagonal stripes"
        elif design.spurious:
            # Diagonal stripes on other colours are rare, so that they are "mostly orange".
            weights = list(design.texture_weights)
            weights[TEXTURES.index("diagonal stripes")] *= 0.15
            texture = _choice(rng, TEXTURES, weights)
        else:
            texture = _choice(rng, TEXTURES, design.texture_weights)
        if design.spurious and ((color == "red" and shape != "circle") or (color == "orange" and texture != "diagonal stripes")):
            continue  # the concept asked for something the probe's planted bias rules out; redraw
        probe = SceneObject(shape, color, texture, size, 0.0, (0.0, 0.0), 0.0, (0, 0, 0))
        if not any(f.matches(probe) for f in forbidden):
            return shape, color, texture
    raise DndError(f"cannot draw an object for {concept.phrase!r} that avoids {[f.phrase for f in forbidden]}")


def _place(
    rng: np.random.Generator, diameters: Sequence[float], gap: float = 0.035, tries: int = 60
) -> list[tuple[float, float] | None]:
    """Centres for objects of the given diameters, inside the canvas and apart; larger ones first.
    An object that finds no room gets None and is dropped."""
    order = sorted(range(len(diameters)), key=lambda i: -diameters[i])
    placed: list[tuple[float, float, float]] = []
    centres: list[tuple[float, float] | None] = [None] * len(diameters)
    for i in order:
        r = diameters[i] / 2
        margin = r + 0.015
        for _ in range(tries):
            cx, cy = rng.uniform(margin, 1 - margin, size=2)
            if all(math.hypot(cx - px, cy - py) >= r + pr + gap for px, py, pr in placed):
                placed.append((cx, cy, r))
                centres[i] = (float(cx), float(cy))
                break
    return centres


def _angle_for(shape: str, rng: np.random.Generator) -> float:
    # Squares and crosses turn only a little so that they stay "square" and "plus", not diamonds and x's.
    if shape in ("square", "cross"):
        return float(rng.uniform(-15, 15))
    if shape in ("triangle", "star"):
        return float(rng.uniform(0, 360))
    return 0.0


def _diameter(size: str, rng: np.random.Generator) -> float:
    low, high = SMALL_DIAMETER if size == "small" else LARGE_DIAMETER
    return float(rng.uniform(low, high))


def _build_scene(
    rng: np.random.Generator,
    specs: list[tuple[str, str, str, str]],
    background: str | None = None,
) -> Scene:
    diameters = [_diameter(size, rng) for _, _, _, size in specs]
    centres = _place(rng, diameters)
    objects = []
    for (shape, color, texture, size), d, c in zip(specs, diameters, centres):
        if c is None:
            continue
        objects.append(SceneObject(shape, color, texture, size, d, c, _angle_for(shape, rng), _jitter_rgb(color, rng)))
    bg = background or _choice(rng, BACKGROUNDS)
    return Scene(bg, tuple(objects), int(rng.integers(2**31)))


def sample_scene(rng: np.random.Generator, design: SceneDesign = TRAINING) -> Scene:
    """Draw one scene from ``design``; fully determined by the generator's state."""
    any_concept = Concept()
    small_only = _small_only_concepts(design)
    specs: list[tuple[str, str, str, str]] = []
    if small_only and rng.random() < 0.35:
        # One small-only concept, small, with two large distractors that outshine it.
        target = small_only[int(rng.integers(len(small_only)))]
        for _ in range(int(rng.integers(1, 3))):
            specs.append((*_sample_attributes(rng, design, target, "small"), "small"))
        for _ in range(2):
            specs.append((*_sample_attributes(rng, design, any_concept, "large", small_only), "large"))
    else:
        n = int(rng.integers(design.min_objects, design.max_objects + 1))
        for _ in range(n):
            size = "small" if rng.random() < design.p_small else "large"
            specs.append((*_sample_attributes(rng, design, any_concept, size, small_only), size))
    scene = _build_scene(rng, specs)
    if small_only and any(c.matches(o) for c in small_only for o in scene.objects):
        # Placement may drop objects; a small-only object must still sit beside two large ones.
        if sum(o.size == "large" for o in scene.objects) < 2:
            return sample_scene(rng, design)
    return scene


def concept_scene(concept: Concept, rng: np.random.Generator) -> Scene:
    """One or two instances of ``concept``, other attributes drawn freely (no planted bias).

    Two phrases rendered from the same seed share everything neither of them names: the layout
    (how many objects, their sizes, places and turns, the background) and the free attributes come
    from their own streams, and every attribute is drawn whether or not the phrase fixes it. So
    "purple" and "purple circle" differ only in the shapes, as a text-to-image model started from
    the same noise keeps its composition across prompts; Step 3 uses the same seeds for every
    concept and so compares concepts on paired images.
    """
    layout_rng, attribute_rng = rng.spawn(2)
    specs = []
    for _ in range(int(layout_rng.integers(1, 3))):
        drawn_size = "small" if layout_rng.random() < 0.3 else "large"
        size = concept.size or drawn_size
        shape = _choice(attribute_rng, SHAPES)
        color = _choice(attribute_rng, tuple(COLORS))
        texture = _choice(attribute_rng, TEXTURES, TRAINING.texture_weights)
        stripes = _choice(attribute_rng, STRIPE_TEXTURES)
        if concept.texture == ANY_STRIPES:
            texture = stripes
        elif concept.texture is not None:
            texture = concept.texture
        elif size == "small":
            texture = "solid"  # as in every design: a texture needs a few periods to be seen
        specs.append((concept.shape or shape, concept.color or color, texture, size))
    diameters = [_diameter(size, layout_rng) for *_, size in specs]
    centres = _place(layout_rng, diameters)
    background = _choice(layout_rng, BACKGROUNDS)
    render_seed = int(layout_rng.integers(2**31))
    objects = []
    for k, ((shape, color, texture, size), diameter, centre) in enumerate(zip(specs, diameters, centres)):
        if centre is None:
            continue
        # Each object's turn and tint from its own stream: a shape that turns (a star) must not shift
        # the draws of the next object, or paired images would drift apart.
        own = np.random.default_rng([render_seed, k])
        rgb = _jitter_rgb(color, own)  # before the turn, which only some shapes draw
        objects.append(SceneObject(shape, color, texture, size, diameter, centre, _angle_for(shape, own), rgb))
    if not objects:  # cannot happen for one or two objects, but never render an empty concept
        return concept_scene(concept, layout_rng)
    return Scene(concept.background or background, tuple(objects), render_seed)


# ---------------------------------------------------------------------------------------------
# Rendering

_SUPERSAMPLE = 4
# Texture geometry as fractions of the canvas side (at 96 px: 6-px stripes, 8-px checks, dots on a
# ~10-px grid). The three scales differ on purpose: a checkerboard is two crossed diagonal gratings
# and a dot grid two crossed axis gratings, so at one shared scale a detector of "diagonal stripes"
# or "vertical stripes" would have to learn an exclusive-or against checks or dots.
_PERIOD = 1 / 16
_CHECK = 1 / 12
_DOT_GRID = 1 / 10
_DOT_RADIUS = 0.32


def texture_tone(rgb: Sequence[int]) -> tuple[int, int, int]:
    """The second tone of a textured object: a darker shade, or for white and black a gray that
    still stands apart from the mid-gray backgrounds."""
    r, g, b = (int(v) for v in rgb)
    if min(r, g, b) > 200:
        return (200, 200, 200)
    if max(r, g, b) < 60:
        return (62, 62, 62)
    return (r // 2, g // 2, b // 2)


def _outline(obj: SceneObject, side: float) -> tuple[str, object]:
    """The object's outline on a canvas of ``side`` px: ("circle", (cx, cy, r_out, r_in)) or
    ("poly", [n×2 array])."""
    cx, cy = obj.center[0] * side, obj.center[1] * side
    r = obj.diameter / 2 * side
    theta = math.radians(obj.angle)
    if obj.shape == "circle":
        return "circle", (cx, cy, 0.92 * r, 0.0)
    if obj.shape == "ring":
        return "circle", (cx, cy, 0.92 * r, 0.5 * 0.92 * r)
    if obj.shape == "square":
        angles = theta + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif obj.shape == "triangle":
        angles = theta - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    elif obj.shape == "star":
        angles = theta - np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.38 * r)
    elif obj.shape == "cross":
        half_w = 0.34 * r
        half_l = math.sqrt(r * r - half_w * half_w)
        pts = np.array(
            [(half_w, -half_l), (half_w, -half_w), (half_l, -half_w), (half_l, half_w), (half_w, half_w),
             (half_w, half_l), (-half_w, half_l), (-half_w, half_w), (-half_l, half_w), (-half_l, -half_w),
             (-half_w, -half_w), (-half_w, -half_l)]
        )
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        return "poly", pts @ rot.T + np.array([cx, cy])
    else:
        raise DndError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return "poly", pts


def _texture_pattern(texture: str, u: np.ndarray, v: np.ndarray, side: float, phase: np.ndarray) -> np.ndarray:
    """1 where the texture's second tone shows, at canvas coordinates (u, v) in px."""
    period = _PERIOD * side
    half = period / 2
    u = u + phase[0] * period
    v = v + phase[1] * period
    if texture == "solid":
        return np.zeros(np.broadcast(u, v).shape, dtype=np.float32)
    if texture == "horizontal stripes":
        return (np.floor(v / half) % 2 + 0 * u).astype(np.float32)
    if texture == "vertical stripes":
        return (np.floor(u / half) % 2 + 0 * v).astype(np.float32)
    if texture == "diagonal stripes":
        return (np.floor((u + v) / math.sqrt(2) / half) % 2).astype(np.float32)
    if texture == "checkerboard":
        cell = _CHECK * side
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    if texture == "dots":
        grid = _DOT_GRID * side
        du = u % grid - grid / 2
        dv = v % grid - grid / 2
        return (du * du + dv * dv < (_DOT_RADIUS * grid) ** 2).astype(np.float32)
    raise DndError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


@dataclass
class Rendered:
    image: np.ndarray  # (side, side, 3) uint8 RGB
    masks: np.ndarray  # (n_objects, side, side) float32 coverage in 0..1, in scene.objects order
    scene: Scene
    side: int

    def pil(self) -> "Image.Image":
        from PIL import Image

        return Image.fromarray(self.image, "RGB")


def _background(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gray":
        level = rng.uniform(118, 138)
        field_ = np.full((side, side), level, dtype=np.float32)
    elif kind == "noisy":
        level = rng.uniform(120, 136)
        # Monochrome noise keeps the ground neutral; clipping keeps it clear of the object tones.
        noise = np.clip(rng.normal(0, 7, size=(side, side)), -18, 18)
        field_ = (level + noise).astype(np.float32)
    elif kind == "gradient":
        low, high = rng.uniform(100, 110), rng.uniform(146, 156)
        a = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / max(side - 1, 1)
        t = (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        field_ = (low + (high - low) * t).astype(np.float32)
    else:
        raise DndError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return np.repeat(field_[:, :, None], 3, axis=2)


def render(scene: Scene, side: int = SIZE) -> Rendered:
    """Pixels and per-object coverage masks of a scene. Edges are anti-aliased by drawing each
    object at 4× and averaging down, so that small objects keep their shape."""
    import cv2

    if not isinstance(side, int) or side < 16:
        raise DndError(f"a scene side must be an integer of at least 16 px, got {side!r}")
    rng = np.random.default_rng(scene.render_seed)
    image = _background(scene.background, side, rng)
    masks = np.zeros((len(scene.objects), side, side), dtype=np.float32)
    ss = _SUPERSAMPLE
    shift = 4  # cv2 fixed-point bits for sub-pixel outlines
    for k, obj in enumerate(scene.objects):
        phase = rng.uniform(0, 1, size=2)
        x0, y0, x1, y1 = obj.bbox(side)
        x0, y0 = max(0, x0 - 1), max(0, y0 - 1)
        x1, y1 = min(side, x1 + 1), min(side, y1 + 1)
        w, h = x1 - x0, y1 - y0
        canvas = np.zeros((h * ss, w * ss), dtype=np.uint8)
        kind, geometry = _outline(obj, side * ss)
        offset = np.array([x0 * ss, y0 * ss], dtype=np.float64)
        scale = 1 << shift
        if kind == "circle":
            cx, cy, r_out, r_in = geometry  # type: ignore[misc]
            centre = (int(round((cx - offset[0]) * scale)), int(round((cy - offset[1]) * scale)))
            cv2.circle(canvas, centre, int(round(r_out * scale)), 255, -1, cv2.LINE_8, shift)
            if r_in > 0:
                cv2.circle(canvas, centre, int(round(r_in * scale)), 0, -1, cv2.LINE_8, shift)
        else:
            pts = np.round((np.asarray(geometry) - offset) * scale).astype(np.int32)
            cv2.fillPoly(canvas, [pts], 255, cv2.LINE_8, shift)
        alpha = cv2.resize(canvas.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)
        if obj.texture != "solid":
            us = (np.arange(w * ss, dtype=np.float32) + 0.5) / ss + x0
            vs = (np.arange(h * ss, dtype=np.float32) + 0.5) / ss + y0
            pattern = _texture_pattern(obj.texture, us[None, :], vs[:, None], side, phase)
            tone = cv2.resize(pattern, (w, h), interpolation=cv2.INTER_AREA)[:, :, None]
        else:
            tone = np.zeros((h, w, 1), dtype=np.float32)
        primary = np.asarray(obj.rgb, dtype=np.float32)
        secondary = np.asarray(texture_tone(obj.rgb), dtype=np.float32)
        colour = primary * (1 - tone) + secondary * tone
        a = alpha[:, :, None]
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - a) + colour * a
        masks[k, y0:y1, x0:x1] = alpha
    return Rendered(np.clip(np.rint(image), 0, 255).astype(np.uint8), masks, scene, side)


def concept_mask(rendered: Rendered, concepts: Iterable[Concept]) -> np.ndarray:
    """Coverage (side×side, 0..1) of every object matching any of ``concepts``."""
    out = np.zeros((rendered.side, rendered.side), dtype=np.float32)
    concepts = list(concepts)
    for obj, mask in zip(rendered.scene.objects, rendered.masks):
        if any(c.matches(obj) for c in concepts):
            np.maximum(out, mask, out=out)
    return out


def render_concept(phrase: str, rng: np.random.Generator, side: int = SIZE) -> "Image.Image | None":
    """An image of ``phrase`` (one or two instances, everything the phrase leaves open drawn at
    random), or None when the phrase is outside the vocabulary (see :func:`read_phrase`)."""
    concept = parse_phrase(phrase)
    if concept is None:
        return None
    return render(concept_scene(concept, rng), side).pil()


# ---------------------------------------------------------------------------------------------
# Probing sets


def probe_file_name(index: int) -> str:
    return f"probe_{index:05d}.png"


def probe_scene(seed: int, index: int, design: SceneDesign = PROBE) -> Scene:
    """Scene ``index`` of a probe: each image has its own generator, so image i is the same
    whatever the size of the probe."""
    return sample_scene(np.random.default_rng([int(seed), int(index)]), design)


def render_probe(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    spurious: bool = True,
    metadata_path: str | Path | None = None,
    side: int = SIZE,
) -> dict:
    """Write ``n`` probe PNGs (``probe_00000.png``...) into ``out_dir`` and their metadata (what is
    where) as JSON to ``metadata_path`` (default ``out_dir.parent / "probe_metadata.json"``, outside
    the folder the engine reads). With ``spurious`` the probe carries the planted biases (red only
    on circles, orange only with diagonal stripes, stars/crosses/purple only small beside large
    distractors); without, it is drawn like the training data. Returns the metadata."""
    if not isinstance(n, int) or n < 1:
        raise DndError(f"a probe needs a positive number of images, got n={n!r}")
    out = Path(out_dir)
    meta_path = Path(metadata_path) if metadata_path is not None else out.parent / "probe_metadata.json"
    if meta_path.resolve().parent == out.resolve():
        raise DndError(f"metadata_path {str(meta_path)!r} is inside the probe folder {str(out)!r}; put it elsewhere so the engine does not read it as an image source")
    out.mkdir(parents=True, exist_ok=True)
    design = PROBE if spurious else PROBE_UNBIASED
    images = []
    for i in range(n):
        scene = probe_scene(seed, i, design)
        rendered = render(scene, side)
        name = probe_file_name(i)
        rendered.pil().save(out / name, format="PNG")
        images.append({"file": name, **scene.metadata(side)})
    metadata = {
        "seed": seed,
        "n": n,
        "size": side,
        "design": design.name,
        "spurious": spurious,
        "planted_biases": (
            {
                "red": "every red object is a circle",
                "circle": f"about {SPURIOUS_SHARE:.0%} of circles are red",
                "orange": "every orange object has diagonal stripes",
                "diagonal stripes": "most diagonally striped objects are orange",
                "small_only": list(design.small_only),
            }
            if spurious
            else {}
        ),
        "vocabulary": {k: list(v) for k, v in VOCABULARY.items()},
        "images": images,
    }
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(metadata, indent=1))
    return metadata
