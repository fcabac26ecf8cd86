"""Step 3, first half: Q images for every unique candidate concept of the run, generated once.

Seeds are fixed per (run seed, image index) and shared by all concepts (see ``image_seed``), so a
rerun — or another neuron proposing the same concept — gets the very same images, and the cache
(keyed by generator config, prompt and seed) answers instead of the generator.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dnd.records import GeneratedSet, generated_schema
from dnd.stall import stage_batches
from dnd.store.cache import ContentCache, content_key

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.store.layout import RunLayout


def planned_device(stage: Any) -> str:
    """"cuda" or "cpu": where the stage's actors will run their model, decided as
    ``build_stage_backend`` decides it (``auto`` is the GPU only when the pool asks Ray for one).
    A device the options name wins; an explicit ``auto`` there counts as the GPU on the same rule,
    so the plan never assumes a GPU that a CPU actor would not have."""
    device = stage.options.get("device") or getattr(stage, "device", None) or "auto"
    if not isinstance(device, str):
        return "cpu"  # a wrong value fails in the backend's own check, with its message
    if device == "auto":
        return "cuda" if getattr(stage, "num_gpus", 0) > 0 else "cpu"
    return device.split(":")[0]


def planned_stage(stage: Any) -> Any:
    """``stage`` with its options as they will decide the images: a backend may resolve an option
    by device (the diffusers backend's ``dtype: auto``: float16 on CUDA, float32 elsewhere) through
    a ``planned_options(options, device)`` of its factory. The cache key and the actors both use
    the result, so what is cached is exactly what was run."""
    from dnd.backends import load_backends
    from dnd.generation.base import GENERATORS

    load_backends()
    plan = getattr(GENERATORS.get(stage.backend), "planned_options", None)
    if not callable(plan):
        return stage
    return stage.model_copy(update={"options": plan(dict(stage.options), planned_device(stage))})


def generator_key(stage: Any) -> str:
    from dnd.generation.base import GENERATORS
    from dnd.registry import backend_code_digest, backend_identity

    stage = planned_stage(stage)
    remote = backend_identity(GENERATORS, stage)
    return content_key("generate", stage.backend, backend_code_digest(GENERATORS, stage.backend),
                       json.dumps(stage.options, sort_keys=True, default=str), *([remote] if remote else []))


def image_seed(run_seed: int, index: int) -> int:
    """A 31-bit seed from (run seed, image index): stable across processes and Python versions.

    Every concept's i-th image uses the same seed ("common random numbers"): a text-to-image model
    started from the same noise draws "red" and "red circle" with a similar composition, so Step 3
    compares concepts on paired images rather than on two unrelated samples of ten."""
    digest = hashlib.sha256(f"{run_seed}|{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class GenerateActor:
    def __init__(self, stage_config: dict, image_format: str = "png"):
        from dnd.config import GeneratorConfig
        from dnd.generation.base import GENERATORS
        from dnd.registry import build_stage_backend

        self.generator = build_stage_backend(GENERATORS, GeneratorConfig.model_validate(stage_config))
        self.image_format = image_format

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        prompts = [str(p) for p in batch["prompt"]]
        seeds = [int(s) for s in batch["seed"]]
        from dnd.errors import ConfigError, DndError
        from dnd.models.oom import halving_on_oom, is_out_of_memory

        try:
            # Out of memory: the batch is halved and retried; only then are its requests refused.
            results = halving_on_oom(lambda part: list(self.generator.generate(part["prompt"], part["seed"])),
                                     {"prompt": prompts, "seed": seeds})
        except Exception as exc:
            # A request the generator could not serve (out of memory even alone, a remote deployment
            # that answered an error) refuses this batch's images, counted with the reason; a bug in
            # a backend or a wrong option fails the stage loudly instead of hiding as refusals.
            if not (is_out_of_memory(exc) or (isinstance(exc, DndError) and not isinstance(exc, ConfigError))):
                raise
            results = None
            failure = f"generator failed: {type(exc).__name__}: {exc}"
        datas, refusals = [], []
        for i in range(len(prompts)):
            if results is None:
                datas.append(b"")
                refusals.append(failure)
                continue
            result = results[i]
            if result.image is None:
                datas.append(b"")
                refusals.append(result.refused or "generator returned no image")
                continue
            buffer = io.BytesIO()
            result.image.convert("RGB").save(buffer, format="PNG" if self.image_format == "png" else "JPEG")
            datas.append(buffer.getvalue())
            refusals.append("")
        return {"key": batch["key"], "prompt": batch["prompt"], "seed": batch["seed"],
                "data": np.array(datas, dtype=object), "refused": np.array(refusals, dtype=object)}


def generated_image_id(entry_key: str) -> str:
    return entry_key[:16]


def run_generation(config: RunConfig, concepts: list[str], layout: RunLayout, log: Callable[[str], None]) -> tuple[GeneratedSet, dict]:
    import ray

    from dnd.models.pools import actor_pool_options

    stage = planned_stage(config.generator)
    started = time.time()
    model_key = generator_key(stage)
    q = stage.images_per_concept
    requests: dict[str, dict[str, Any]] = {}
    layout_per_concept: list[list[str]] = []
    for concept in concepts:
        keys = []
        for index in range(q):
            seed = image_seed(config.seed, index)
            prompt = stage.prompt_template.format(concept)
            key = content_key(model_key, prompt, seed)
            requests[key] = {"key": key, "prompt": prompt, "seed": seed}
            keys.append(key)
        layout_per_concept.append(keys)
    cache = ContentCache(layout.cache, "generated", generated_schema(), config.output.storage_options)
    known = cache.lookup(requests.keys(), columns=["refused"])
    refused: dict[str, str | None] = {key: (row["refused"] or None) for key, row in known.items()}
    missing = [requests[key] for key in requests if key not in known]
    log(f"step 3: {len(concepts)} unique candidate concepts x {q} images; {len(known)} from cache, {len(missing)} to generate")
    if missing:
        dataset = ray.data.from_items(missing).map_batches(
            GenerateActor,
            fn_constructor_kwargs={"stage_config": stage.model_dump(mode="json"), "image_format": config.output.image_format},
            batch_size=stage.batch_size,
            **actor_pool_options(stage),
        )
        with cache.writer() as writer:
            for batch in stage_batches(dataset, "step 3 (image generation)", stage, config):
                for i in range(len(batch["key"])):
                    reason = str(batch["refused"][i]) or None
                    key = str(batch["key"][i])
                    refused[key] = reason
                    writer.add({"key": key, "prompt": str(batch["prompt"][i]), "seed": int(batch["seed"][i]),
                                "data": bytes(batch["data"][i]), "refused": reason})
    generated = GeneratedSet(concepts)
    for keys in layout_per_concept:
        generated.images.append([(generated_image_id(k), refused.get(k, "not generated")) for k in keys])
        for k in keys:
            generated.entry_keys[generated_image_id(k)] = k
    n_refused = sum(1 for r in refused.values() if r)
    log(f"step 3: generation done in {time.time() - started:.1f}s ({n_refused} refused)")
    return generated, {
        "generation": {"unique_concepts": len(concepts), "images": len(requests), "generated": len(missing),
                       "refused": n_refused, "cache": cache.stats.as_dict()}
    }


def generated_dataset(layout: RunLayout, generated: GeneratedSet, storage_options: dict):
    """A Ray dataset (image_id, data) of the usable generated images, read from the cache."""
    from dnd.store.fs import url_to_fs
    from dnd.store.layout import ray_parquet

    wanted = {generated.entry_keys[i]: i for u in range(len(generated.concepts)) for i in generated.usable(u)}
    cache = ContentCache(layout.cache, "generated", generated_schema(), storage_options)
    parts = cache.parts()
    fs, _ = url_to_fs(layout.cache, storage_options)
    dataset = ray_parquet(fs, parts, columns=["key", "data"])
    return dataset.map_batches(_select_generated, fn_kwargs={"wanted": wanted}, batch_format="numpy", num_cpus=0.25)


def _select_generated(batch: dict[str, Any], wanted: dict[str, str]) -> dict[str, Any]:
    keys = batch["key"].astype(str)
    mask = np.array([k in wanted for k in keys], dtype=bool)
    # The same entry may sit in two part files (two runs racing); keep each image once.
    chosen, seen = [], set()
    for i in np.nonzero(mask)[0]:
        if keys[i] not in seen:
            seen.add(keys[i])
            chosen.append(i)
    index = np.asarray(chosen, dtype=np.int64)
    return {"image_id": np.array([wanted[keys[i]] for i in index], dtype=object), "data": batch["data"][index]}
