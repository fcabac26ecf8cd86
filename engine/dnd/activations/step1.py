"""Step 1 on Ray Data: streaming top-K over the probing set, then attention crops of the top images.

Pass A streams every probe image through the target-model actor pool and keeps only (neurons x K)
values on the driver. Pass B reads back just the images that are top-K for some neuron — each once,
however many neurons it serves — recomputes their spatial maps, cuts attention crops and scores them;
the final top-K per neuron is taken from D_probe ∪ D_cropped with the same summary function.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dnd.activations.topk import StreamingTopK, holistic_and_local, own_crops_only
from dnd.records import images_schema

MAX_NAMED_SKIPS = 50


@dataclass
class LayerPlan:
    name: str
    size: int
    neurons: list[int]
    has_map: bool


@dataclass
class ProbeImage:
    image_id: str
    ref: str
    source: str


@dataclass
class CropInfo:
    image_id: str
    parent_id: str
    box: list[int]
    made_for: list[list[int]]


@dataclass
class Step1Result:
    layers: list[LayerPlan]
    topk: list[StreamingTopK]
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


def _pool_kwargs(pool: Any) -> dict[str, Any]:
    import ray

    return {
        "compute": ray.data.ActorPoolStrategy(size=pool.pool_size),
        "num_gpus": pool.num_gpus,
        "num_cpus": pool.num_cpus,
        # Not set here: Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1, so a
        # killed actor (lost node, OOM-killer) is restarted and its unfinished batches rerun on it
        # (tests/cluster/test_ray_job.py kills one); passing them explicitly is deprecated in Ray 2.60.
    }


def read_concurrency(config: Any) -> int | None:
    """How many read-and-decode tasks may run at once (``probe.read_concurrency``; see its doc)."""
    import ray

    if config.probe.read_concurrency is not None:
        return config.probe.read_concurrency
    if config.target.num_gpus > 0:
        return None
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // 4)


def run_step1(config: Any, layers: list[LayerPlan], read_tasks: list[Any], layout: Any,
              log: Callable[[str], None]) -> Step1Result:
    import ray

    from dnd.activations.actors import AttentionCrops, ProbeActivations, read_and_prepare
    from dnd.models.target import build_target

    target_config = config.target.model_dump(mode="json")
    neurons = [layer.neurons for layer in layers]
    names = [layer.name for layer in layers]
    timings: dict[str, float] = {}
    # The driver needs only the input geometry; the actors build their own copies of the model.
    target = build_target(config.target.model, config.target.weights, None, config.target.options)
    read_kwargs = {"input_spec": target.input_spec, "preprocess": target.preprocess,
                   "storage_options": config.probe.storage_options}
    del target

    # ---- pass A: every probe image, pooled activations only -------------------------------------
    started = time.time()
    tasks = ray.data.from_items([t.as_row() for t in read_tasks])
    prepared = tasks.map_batches(read_and_prepare, batch_size=1, fn_kwargs=read_kwargs, num_cpus=0.25,
                                 compute=ray.data.TaskPoolStrategy(size=read_concurrency(config)))
    activations = prepared.map_batches(
        ProbeActivations,
        fn_constructor_kwargs={"target_config": target_config, "layers": names, "neurons": neurons,
                               "summary": config.step1.summary},
        batch_size=config.target.batch_size,
        **_pool_kwargs(config.target),
    )
    topk = [StreamingTopK(len(layer.neurons), config.step1.top_k) for layer in layers]
    source_rank: dict[str, int] = {}
    for task in read_tasks:
        source_rank.setdefault(task.source, len(source_rank))
    seen: dict[int, ProbeImage] = {}
    skipped: dict[str, list[str]] = defaultdict(list)
    skip_counts: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    images_read = 0
    for batch in activations.iter_batches(batch_size=None, batch_format="numpy"):
        keep = []
        for row, (key, error) in enumerate(zip(batch["key"], batch["error"])):
            images_read += 1
            ref = str(batch["ref"][row])
            if error:
                reason = str(error).split(" (")[0]
                skip_counts[reason] += 1
                if len(skipped[reason]) < MAX_NAMED_SKIPS:
                    skipped[reason].append(f"{ref}: {error}")
                continue
            key = int(key)
            image = ProbeImage(str(batch["image_id"][row]), ref, str(batch["source"][row]))
            if key in seen:
                # The same bytes twice: one image. Which copy is recorded must not depend on the
                # order Ray delivers batches in, so the earlier source (then the smaller ref) wins.
                kept = seen[key]
                if (source_rank.get(image.source, 0), image.ref) < (source_rank.get(kept.source, 0), kept.ref):
                    seen[key], image, kept = image, kept, image
                    per_source[kept.source] -= 1
                    per_source[seen[key].source] += 1
                skip_counts["duplicate image"] += 1
                if len(skipped["duplicate image"]) < MAX_NAMED_SKIPS:
                    skipped["duplicate image"].append(f"{image.ref}: same bytes as {seen[key].ref}")
                continue
            seen[key] = image
            per_source[image.source] += 1
            keep.append(row)
        if keep:
            index = np.asarray(keep)
            keys = batch["key"][index].astype(np.uint64)
            for i, state in enumerate(topk):
                state.update(batch[f"act_{i}"][index], keys)
        if images_read % 2000 < len(batch["key"]):
            log(f"step 1: {images_read} probe images through the target model")
    timings["step1_activations_s"] = time.time() - started
    used = len(seen)
    log(f"step 1: {used} probe images used, {sum(skip_counts.values())} skipped")
    if used == 0:
        from dnd.errors import DndError

        reasons = ", ".join(f"{n} {r}" for r, n in skip_counts.items()) or "none found"
        raise DndError(f"the probing set has no usable image ({reasons})")

    winners = set()
    for state in topk:
        winners.update(int(k) for k in state.winners())
    probe = {key: seen[key] for key in winners}
    del seen

    # ---- pass B: top-K images once each -> spatial maps -> attention crops -> crop scores --------
    started = time.time()
    targets: dict[int, list[list[int]]] = defaultdict(list)
    linear_crops = config.step1.linear_crops
    for i, (layer, state) in enumerate(zip(layers, topk)):
        if not layer.has_map and linear_crops == "none":
            continue
        rows, cols = np.nonzero(np.isfinite(state.values))
        for position, slot in zip(rows, cols):
            targets[int(state.keys[position, slot])].append([i, layer.neurons[position]])
    positions = [{neuron: p for p, neuron in enumerate(layer.neurons)} for layer in layers]
    crops: dict[int, CropInfo] = {}
    crop_acts: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
    final = [state.copy() for state in topk]
    # Linear layers cropped through Grad-CAM keep their crops apart and take half of K from them.
    local_only = {i: StreamingTopK(len(layer.neurons), config.step1.top_k // 2) for i, layer in enumerate(layers)
                  if not layer.has_map and linear_crops == "gradcam" and config.step1.top_k >= 2}
    crop_count = 0
    use_crops = config.step1.crops and config.step1.crops_per_image > 0 and targets
    items = [
        {"image_id": probe[key].image_id, "ref": probe[key].ref, "targets": json.dumps(targets.get(key, []))}
        for key in sorted(winners)
    ]
    crop_options = {
        "max_crops": config.step1.crops_per_image if use_crops else 0,
        "iou_threshold": config.step1.crop_iou,
        "whole_image_cap": config.step1.whole_image_iou_cap,
        "min_side": config.step1.min_crop_pixels,
    }
    handle, writer = layout.open_writer(images_schema(), "images", "part-00000.parquet")
    try:
        cropped = ray.data.from_items(items).map_batches(
            AttentionCrops,
            fn_constructor_kwargs={"target_config": target_config, "layers": names, "neurons": neurons,
                                   "summary": config.step1.summary, "crop_options": crop_options,
                                   "storage_options": config.probe.storage_options,
                                   "image_format": config.output.image_format,
                                   "linear_crops": linear_crops, "gradcam_layer": config.step1.gradcam_layer},
            batch_size=max(1, min(16, config.target.batch_size)),
            **_pool_kwargs(config.target),
        )
        for batch in cropped.iter_batches(batch_size=None, batch_format="numpy"):
            records = []
            is_crop = batch["kind"] == "crop"
            for row in range(len(batch["kind"])):
                kind = str(batch["kind"][row])
                identifier = str(batch["image_id"][row])
                key = int(batch["key"][row])
                box = [int(v) for v in batch["box"][row]]
                parent = str(batch["parent_id"][row])
                if kind == "crop":
                    made_for = json.loads(str(batch["made_for"][row]))
                    crops[key] = CropInfo(identifier, parent, box, made_for)
                    source = probe[int(parent, 16)].source
                    ref = ""
                else:
                    info = probe[key]
                    if batch["error"][row]:
                        skip_counts["unreadable on second read"] += 1
                        if len(skipped["unreadable on second read"]) < MAX_NAMED_SKIPS:
                            skipped["unreadable on second read"].append(f"{info.ref}: {batch['error'][row]}")
                    source, ref, made_for = info.source, info.ref, []
                records.append({
                    "image_id": identifier, "kind": kind, "parent_id": parent, "box": box,
                    "width": int(batch["width"][row]), "height": int(batch["height"][row]),
                    "source": source, "ref": ref, "made_for": json.dumps(made_for) if made_for else "",
                    "data": bytes(batch["data"][row]),
                })
            if records:
                import pyarrow as pa

                writer.write_table(pa.Table.from_pylist(records, schema=images_schema()))
            if is_crop.any():
                index = np.nonzero(is_crop)[0]
                keys = batch["key"][index].astype(np.uint64)
                crop_count += len(index)
                # D_cropped of a layer is the crops cut from that layer's own maps: the paper dissects one
                # layer at a time, so its D_cropped never holds another layer's crops. Letting every crop
                # compete everywhere put zoomed-in crops made for conv neurons at the top of linear
                # layers (which make no crops), ahead of the whole images that show their concept.
                # With crop_scope "neuron" a neuron's D_cropped narrows further, to the crops of its own
                # maps (the authors' published procedure); "layer" lets a layer's crops compete for all
                # of its neurons.
                made = [json.loads(str(batch["made_for"][row])) for row in index]
                for i, state in enumerate(final):
                    mine = np.array([any(layer_index == i for layer_index, _ in m) for m in made], dtype=bool)
                    if mine.any():
                        values = batch[f"act_{i}"][index[mine]]
                        if config.step1.crop_scope == "neuron":
                            values = own_crops_only(values, [m for m, keep in zip(made, mine) if keep], i, positions[i])
                        local_only.get(i, state).update(values, keys[mine])
                # Each crop's activation for the neurons whose maps made it, for the report.
                for row in index:
                    for layer_index, neuron in json.loads(str(batch["made_for"][row])):
                        position = positions[layer_index][neuron]
                        crop_acts[(layer_index, position)].append(
                            (int(batch["key"][row]), float(batch[f"act_{layer_index}"][row][position]))
                        )
    finally:
        writer.close()
        handle.close()
    for i, crops_state in local_only.items():
        final[i] = holistic_and_local(final[i], crops_state)
    timings["step1_crops_s"] = time.time() - started
    log(f"step 1: {len(winners)} top images re-read once each, {crop_count} attention crops scored")
    counts = {
        "images_read": images_read,
        "images_used": used,
        "images_skipped": dict(skip_counts),
        "images_per_source": dict(per_source),
        "top_images_unique": len(winners),
        "crops": crop_count,
        "target_forward_images": used + len(winners) + crop_count,
    }
    return Step1Result(layers, final, probe, crops, dict(crop_acts), counts, {k: v for k, v in skipped.items()}, timings)
