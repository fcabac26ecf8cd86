"""Step 2A on Ray Data: caption every unique top image and crop of the run exactly once."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dnd.records import Caption, NeuronRow, caption_schema
from dnd.stall import stage_batches
from dnd.store.cache import ContentCache, content_key
from dnd.store.images import stored_images

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.records import Step1Result
    from dnd.store.layout import RunLayout


def captioner_key(stage: Any) -> str:
    """Cache identity of a captioner, from its config (no model needs loading to know it)."""
    from dnd.captioning.base import CAPTIONERS
    from dnd.captioning.cleanup import CLEANUP_VERSION
    from dnd.registry import backend_code_digest, backend_identity

    remote = backend_identity(CAPTIONERS, stage)
    cleanup = f"cleanup={CLEANUP_VERSION}" if stage.cleanup else "cleanup=off"
    return content_key("caption", stage.backend, backend_code_digest(CAPTIONERS, stage.backend),
                       json.dumps(stage.options, sort_keys=True, default=str), cleanup, *([remote] if remote else []))


class CaptionActor:
    """Holds one captioner; decodes a batch of stored images and captions them in one call."""

    def __init__(self, stage_config: dict):
        from dnd.captioning.base import CAPTIONERS
        from dnd.config import CaptionerConfig
        from dnd.registry import build_stage_backend

        config = CaptionerConfig.model_validate(stage_config)
        self.captioner = build_stage_backend(CAPTIONERS, config)
        self.cleanup = config.cleanup

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from dnd.models.oom import halving_on_oom

        return halving_on_oom(self._caption, batch)

    def _caption(self, batch: dict[str, Any]) -> dict[str, Any]:
        from dnd.captioning.cleanup import clean_caption, decoded_caption
        from dnd.probe.decode import decode_rgb

        images = [decode_rgb(bytes(data)) for data in batch["data"]]
        captions = self.captioner.caption(images)
        if len(captions) != len(images):
            raise RuntimeError(f"captioner returned {len(captions)} captions for {len(images)} images")
        tidy = clean_caption if self.cleanup else decoded_caption
        return {"image_id": batch["image_id"], "caption": np.array([tidy(c or "") for c in captions], dtype=object)}


def run_captions(config: RunConfig, step1: Step1Result, rows: list[NeuronRow], layout: RunLayout, log: Callable[[str], None]) -> dict:
    from dnd.models.pools import actor_pool_options

    stage = config.captioner
    started = time.time()
    wanted = {t.image_id for row in rows for t in row.top_images}
    model_key = captioner_key(stage)
    cache = ContentCache(layout.cache, "captions", caption_schema(), config.output.storage_options)
    keys = {image: content_key(model_key, image) for image in wanted}
    cached = cache.lookup(keys.values())
    captions = {image: cached[key]["caption"] for image, key in keys.items() if key in cached}
    missing = wanted - set(captions)
    log(f"step 2A: {len(wanted)} unique images to caption, {len(captions)} from cache")
    if missing:
        dataset = stored_images(layout, missing).map_batches(
            CaptionActor,
            fn_constructor_kwargs={"stage_config": stage.model_dump(mode="json")},
            batch_size=stage.batch_size,
            **actor_pool_options(stage),
        )
        with cache.writer() as writer:
            for batch in stage_batches(dataset, "step 2A (captions)", stage, config):
                for image, caption in zip(batch["image_id"], batch["caption"]):
                    image, caption = str(image), str(caption)
                    captions[image] = caption
                    writer.add({"key": keys[image], "image_id": image, "caption": caption})
    lost = wanted - set(captions)
    for row in rows:
        row.captions = [Caption(t.image_id, captions.get(t.image_id, "")) for t in row.top_images]
    log(f"step 2A: {len(missing)} images captioned in {time.time() - started:.1f}s")
    return {
        "captions": {"unique_images": len(wanted), "captioned": len(missing) - len(lost), "missing": len(lost),
                     "empty": sum(1 for c in captions.values() if not c.strip()), "cache": cache.stats.as_dict()},
    }
