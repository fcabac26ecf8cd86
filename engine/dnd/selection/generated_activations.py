"""Step 3: the target model's activations on the generated images, content-addressed.

Each generated image's activations for every requested neuron of every layer are cached under a
key of (target model, layers, neurons, summary function, the image's generation key), so a resumed
or repeated run sends only images it has never seen through the target model. Two values per
neuron: the run's summary (the paper's g, which the scoring functions use) and the map's peak
(which parsimony and the multiple labels' support compare, see ``selection/parsimony.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dnd.records import generated_activations_schema
from dnd.stall import stage_batches
from dnd.store.cache import ContentCache, content_key

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.store.layout import RunLayout


@dataclass
class Measured:
    """One generated image through the target model: per layer, the requested neurons' summaries
    and their map peaks (equal to the summaries for layers without maps)."""

    summaries: list[np.ndarray]
    peaks: list[np.ndarray]


def target_pass_key(config: RunConfig, layers: list[Any]) -> str:
    target = config.target.model_dump(mode="json", include={"model", "weights", "checkpoint", "options"})
    return content_key("target-pass", _code_digest(), json.dumps(target, sort_keys=True, default=str),
                       json.dumps([[layer.name, layer.neurons] for layer in layers]), config.step1.summary,
                       "summary+peak")


def _code_digest() -> str:
    """The target-pass code is part of the key: a fixed hook or summary must not serve stale values."""
    import hashlib
    import inspect

    import dnd.models.actors as actors
    import dnd.models.target as target

    source = inspect.getsource(actors) + inspect.getsource(target)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def generated_activations(config: RunConfig, layers: list[Any], layout: RunLayout, dataset: Callable[[set[str]], Any],
                          entry_keys: dict[str, str], log: Callable[[str], None]) -> tuple[dict[str, Measured], dict]:
    """``image_id -> Measured`` (summaries and peaks per layer) for the images in ``entry_keys``.

    ``dataset(ids)`` gives a Ray dataset of (image_id, data) rows for the images not in the cache.
    """
    from dnd.models.actors import ProbeActivations, prepare_encoded
    from dnd.models.pools import actor_pool_options
    from dnd.models.target import build_target

    model_key = target_pass_key(config, layers)
    keys = {image: content_key(model_key, entry) for image, entry in entry_keys.items()}
    cache = ContentCache(layout.cache, "generated_activations", generated_activations_schema(), config.output.storage_options)
    found = cache.lookup_vectors(keys.values(), "acts")
    widths = np.cumsum([0] + [len(layer.neurons) for layer in layers])
    total = int(widths[-1])

    def split(vector: Any) -> Measured:
        # A cached vector is every layer's summaries, then every layer's peaks.
        flat = np.asarray(vector, dtype=np.float32)
        spans = [slice(widths[i], widths[i + 1]) for i in range(len(layers))]
        return Measured([flat[span] for span in spans], [flat[total:][span] for span in spans])

    out = {image: split(found[key]) for image, key in keys.items() if key in found}
    missing = set(keys) - set(out)
    if missing:
        target = build_target(config.target.model, config.target.weights, None, config.target.options)
        spec, preprocess = target.input_spec, target.preprocess
        del target
        # Blocks of one target batch: the images come as the blocks of the generation cache's parts (hundreds
        # of images each), and an actor's output reaches the driver only when its whole block is done, so a
        # slow target (a ViT on two CPUs) would deliver nothing for many minutes and trip the stall watch.
        acts = dataset(missing).repartition(target_num_rows_per_block=config.target.batch_size).map_batches(
            prepare_encoded, fn_kwargs={"input_spec": spec, "preprocess": preprocess}, batch_format="numpy", num_cpus=0.25,
        ).map_batches(
            ProbeActivations,
            fn_constructor_kwargs={"target_config": config.target.model_dump(mode="json"),
                                   "layers": [l.name for l in layers],
                                   "neurons": [l.neurons for l in layers], "summary": config.step1.summary,
                                   "peaks": True},
            batch_size=config.target.batch_size, **actor_pool_options(config.target),
        )
        with cache.writer() as writer:
            for batch in stage_batches(acts, "step 3 (target on generated images)", config.target, config):
                for i, image in enumerate(batch["image_id"]):
                    image = str(image)
                    if image not in keys:
                        continue
                    measured = Measured(
                        [np.asarray(batch[f"act_{li}"][i], dtype=np.float32) for li in range(len(layers))],
                        [np.asarray(batch[f"peak_{li}"][i], dtype=np.float32) for li in range(len(layers))])
                    out[image] = measured
                    vector = np.concatenate(measured.summaries + measured.peaks)
                    # The array itself, not .tolist(): Arrow takes it in as is, where a list would hold a
                    # Python float per neuron (2.4 MB an image for 36,864 neurons) until the next flush.
                    writer.add({"key": keys[image], "acts": vector})
    log(f"step 3: {len(keys)} generated images through the target model ({len(keys) - len(missing)} from cache)")
    return out, {"target_forward_images": len(missing), "cache": cache.stats.as_dict()}
