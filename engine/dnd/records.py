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


def table(rows: list[dict[str, Any]], schema):
    pa = _pa()
    return pa.Table.from_pylist(rows, schema=schema)
