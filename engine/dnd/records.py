"""The records the stages hand each other, and the Arrow schemas of every table they write, in one
place so that producers and consumers agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LayerPlan:
    """A layer to dissect, checked on the driver: its module name, its neuron count, the neurons
    asked for, and whether its output has spatial maps (conv, patch tokens) or not (linear)."""

    name: str
    size: int
    neurons: list[int]
    has_map: bool


@dataclass
class ProbeImage:
    """A probing-set image in some neuron's top-K: its id (content hash), where to read it again,
    and the source it came from."""

    image_id: str
    ref: str
    source: str


@dataclass
class CropInfo:
    """An attention crop: its id, its parent probe image, its box in the parent's pixels, and the
    (layer index, neuron) pairs whose maps cut it."""

    image_id: str
    parent_id: str
    box: list[int]
    made_for: list[list[int]]


@dataclass
class Step1Result:
    """Step 1's hand-off: every layer's final top-K over D_probe ∪ D_cropped (keys are image or
    crop keys), the probe images and crops those keys name, and each crop's activation for the
    neurons whose maps cut it (for the report)."""

    layers: list[LayerPlan]
    topk: list[Any]  # one dnd.activations.topk.StreamingTopK per layer
    probe: dict[int, ProbeImage]  # only the images in some top-K
    crops: dict[int, CropInfo]
    crop_activations: dict[tuple[int, int], list[tuple[int, float]]]  # (layer, position) -> [(crop key, act)]
    counts: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def winner_keys(self) -> set[int]:
        keys: set[int] = set()
        for state in self.topk:
            keys.update(int(k) for k in state.winners())
        return keys


@dataclass
class GeneratedSet:
    """Step 3's generated images of every unique candidate concept: ``images[u]`` lists concept u's
    (image_id, refused reason), image i of every concept drawn from the same seed."""

    concepts: list[str]
    images: list[list[tuple[str, str | None]]] = field(default_factory=list)
    entry_keys: dict[str, str] = field(default_factory=dict)  # image_id -> cache key

    def usable(self, u: int) -> list[str]:
        return [image for image, refused in self.images[u] if refused is None]


@dataclass
class TopImage:
    """One of a neuron's top-K images over D_probe ∪ D_cropped: a probe image, or a crop with its
    parent and box in the parent's pixels."""

    image_id: str
    activation: float
    is_crop: bool
    parent_id: str = ""
    box: list[int] = field(default_factory=list)


@dataclass
class NeuronCrop:
    """A crop cut by one of this neuron's maps, with the neuron's activation on it (for the report)."""

    image_id: str
    parent_id: str
    box: list[int]
    activation: float


@dataclass
class Caption:
    """Step 2A's caption of one top image."""

    image_id: str
    caption: str


@dataclass
class Candidate:
    """A candidate concept of one neuron. Step 2B sets ``concept``; Step 3 fills the rest. ``None``
    means "not computed": Step 3 off leaves scores, mean activation and ``sub_phrase`` unset."""

    concept: str
    score: float | None = None
    scores: dict[str, float | None] | None = None  # every scoring function of A.1.4, by name
    images: int = 0  # usable generated images
    mean_activation: float | None = None
    # True for a part of the label that Step 3's parsimony added and generated to test it.
    sub_phrase: bool | None = None
    refused: str | None = None  # why the generator refused some of its images
    # dnd score: NeuronEval's metrics of this concept against the neuron over the probing set.
    faithfulness: dict[str, float | None] | None = None


@dataclass
class NeuronRow:
    """One row of ``neurons/``: a (layer, neuron), its top images from Step 1, its captions (2A),
    candidates (2B, scored in 3), label and multiple labels (3). ``status`` is ok or failed, and
    ``error`` says why, or carries a warning for an ok neuron."""

    layer: str
    neuron: int
    top_images: list[TopImage] = field(default_factory=list)
    crops: list[NeuronCrop] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    label: str | None = None
    labels: list[str] = field(default_factory=list)
    status: str = "ok"
    error: str = ""
    nan_images: int = 0  # probe images on which this neuron's activation was not finite
    faithfulness: dict[str, Any] | None = None  # dnd score: the label's metrics and their concept source

    def fail(self, reason: str) -> None:
        self.status, self.error = "failed", reason

    def warn(self, message: str) -> None:
        self.error = f"{self.error}; {message}" if self.error else message


def _pa():
    import pyarrow as pa

    return pa


def score_fields():
    pa = _pa()
    return [
        pa.field("mean", pa.float64()),
        pa.field("topk_squared", pa.float64()),
        pa.field("image_products", pa.float64()),
        pa.field("topk_squared_image_products", pa.float64()),
    ]


def faithfulness_fields():
    """NeuronEval's five reliable metrics; null where not computed or undefined."""
    pa = _pa()
    return [pa.field(name, pa.float64()) for name in ("correlation", "cosine", "auprc", "f1", "iou")]


def neurons_schema():
    """One row per (layer, neuron): the result users read."""
    pa = _pa()
    top_image = pa.struct([
        pa.field("image_id", pa.string()),
        pa.field("activation", pa.float32()),
        pa.field("is_crop", pa.bool_()),
        pa.field("parent_id", pa.string()),
        pa.field("box", pa.list_(pa.int32())),
    ])
    crop = pa.struct([
        pa.field("image_id", pa.string()),
        pa.field("parent_id", pa.string()),
        pa.field("box", pa.list_(pa.int32())),
        pa.field("activation", pa.float32()),
    ])
    caption = pa.struct([pa.field("image_id", pa.string()), pa.field("caption", pa.string())])
    candidate = pa.struct([
        pa.field("concept", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("scores", pa.struct(score_fields())),
        pa.field("images", pa.int32()),
        pa.field("mean_activation", pa.float64()),
        # Added by Step 3's parsimony (a part of the label, generated to test it), not by Step 2.
        pa.field("sub_phrase", pa.bool_()),
        pa.field("refused", pa.string()),
        pa.field("faithfulness", pa.struct(faithfulness_fields())),
    ])
    return pa.schema([
        pa.field("layer", pa.string()),
        pa.field("neuron", pa.int32()),
        pa.field("label", pa.string()),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("candidates", pa.list_(candidate)),
        pa.field("top_images", pa.list_(top_image)),
        pa.field("crops", pa.list_(crop)),
        pa.field("captions", pa.list_(caption)),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("nan_images", pa.int64()),
        pa.field("faithfulness", pa.struct([pa.field("concepts", pa.string()), *faithfulness_fields()])),
    ])


def images_schema():
    """Probe images in some neuron's top-K and their attention crops (D_cropped), content-addressed."""
    pa = _pa()
    return pa.schema([
        pa.field("image_id", pa.string()),
        pa.field("kind", pa.string()),  # probe | crop
        pa.field("parent_id", pa.string()),
        pa.field("box", pa.list_(pa.int32())),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("source", pa.string()),
        pa.field("ref", pa.string()),
        pa.field("made_for", pa.string()),  # JSON [[layer, neuron], ...] whose maps produced the crop
        pa.field("data", pa.binary()),
    ])


def neurons_table(rows: list[NeuronRow]):
    """The ``neurons/`` Arrow table of ``rows``, in their order."""
    from dataclasses import asdict

    return _pa().Table.from_pylist([asdict(row) for row in rows], schema=neurons_schema())


# The content-addressed caches' tables: every one is keyed by ``key``, a content hash of all that
# determines the entry (dnd.store.cache.content_key).


def caption_schema():
    """Step 2A: a caption per (captioner, image)."""
    pa = _pa()
    return pa.schema([pa.field("key", pa.string()), pa.field("image_id", pa.string()), pa.field("caption", pa.string())])


def answer_schema():
    """Step 2B: an LLM answer per (summarizer, prompt); only successful answers are stored."""
    pa = _pa()
    return pa.schema([pa.field("key", pa.string()), pa.field("text", pa.string()), pa.field("error", pa.string())])


def generated_schema():
    """Step 3: a generated image per (generator, prompt, seed), or the reason it was refused."""
    pa = _pa()
    return pa.schema([
        pa.field("key", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("data", pa.binary()),
        pa.field("refused", pa.string()),
    ])


def generated_activations_schema():
    """Step 3: the target model's summary activations and map peaks on one generated image, every
    layer's neurons concatenated (see dnd.selection.generated_activations)."""
    pa = _pa()
    return pa.schema([pa.field("key", pa.string()), pa.field("acts", pa.list_(pa.float32()))])


def embedding_schema():
    """Step 3: an embedder's vector per (embedder, image or text)."""
    pa = _pa()
    return pa.schema([pa.field("key", pa.string()), pa.field("embedding", pa.list_(pa.float32()))])
