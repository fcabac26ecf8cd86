"""The run's embedder (``selection.embedder``, CLIP by default) on probe images and texts, through the
same content-addressed embedding cache Step 3 uses: images Step 3 embedded are not embedded again,
and a second ``dnd score`` embeds nothing."""

from __future__ import annotations

from typing import Any

import numpy as np

from dnd.faithfulness.sources import ProbeImages, ScoringContext, needs_embedder
from dnd.store.cache import content_key


def _stage(context: ScoringContext) -> Any:
    needs_embedder(context.config, "this concept source")
    return context.config.selection.embedder


def embed_texts(context: ScoringContext, texts: list[str], what: str = "faithfulness: explanations",
                tally: dict[str, int] | None = None) -> np.ndarray:
    """(len(texts), d) unit rows; ``what`` names them in the log, ``tally`` counts cache hits and misses."""
    import ray

    from dnd.pipeline import init_ray
    from dnd.selection.stage import embed_items, embedder_key

    model_key = embedder_key(_stage(context))
    unique = sorted(set(texts))
    init_ray(context.config)
    found = embed_items(context.config, context.layout,
                        lambda items: ray.data.from_items([{"text": t} for t in sorted(items)]),
                        {t: content_key(model_key, "text", t) for t in unique}, context.log, what, tally)
    return np.stack([found[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)


def _read(batch: dict[str, Any], storage_options: dict) -> dict[str, Any]:
    from dnd.probe.sources import read_refs

    read = read_refs([str(r) for r in batch["ref"]], storage_options)
    keep = [i for i, (data, _) in enumerate(read) if data]
    return {"image_id": np.array([str(batch["image_id"][i]) for i in keep], dtype=object),
            "data": np.array([read[i][0] for i in keep], dtype=object)}


def embed_probe_images(context: ScoringContext, images: ProbeImages, what: str = "faithfulness: probe images",
                       tally: dict[str, int] | None = None) -> tuple[np.ndarray, int]:
    """(images, d) unit rows in ``images`` order, and how many images could not be read again
    (their rows are zero, so they resemble no explanation)."""
    import ray

    from dnd.pipeline import init_ray
    from dnd.selection.stage import embed_items, embedder_key

    model_key = embedder_key(_stage(context))
    refs = dict(zip(images.image_ids, images.refs))
    storage = context.config.probe.storage_options

    def dataset(ids: set[str]) -> Any:
        rows = [{"image_id": i, "ref": refs[i]} for i in sorted(ids)]
        return ray.data.from_items(rows).map_batches(_read, fn_kwargs={"storage_options": storage},
                                                     batch_size=32, num_cpus=0.25)

    init_ray(context.config)
    found = embed_items(context.config, context.layout, dataset,
                        {i: content_key(model_key, "image", i) for i in images.image_ids}, context.log, what, tally)
    width = next(iter(found.values())).shape[0] if found else 0
    matrix = np.zeros((len(images.image_ids), width), dtype=np.float32)
    missing = 0
    for row, image in enumerate(images.image_ids):
        if image in found:
            matrix[row] = found[image]
        else:
            missing += 1
    return matrix, missing
