"""Arrow schemas of every table the stages write, in one place so readers and writers agree."""

from __future__ import annotations

from typing import Any


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
