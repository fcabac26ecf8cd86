"""Step 1, pass A on Ray Data: streaming top-K over the probing set; and the top-K's side of pass B.

Pass A streams every probe image through the target-model actor pool and keeps only (neurons x K)
values on the driver. Pass B (``cropping/stage.py``) reads back just the images that are top-K for
some neuron; :func:`crop_requests` says which neurons each of them serves, and :class:`CropMerger`
takes the scored crops into the final top-K over D_probe ∪ D_cropped with the same summary function.
``pipeline.py`` runs the two passes in order.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dnd.activations.topk import StreamingTopK, holistic_and_local, own_crops_only
from dnd.models.pools import actor_pool_options
from dnd.records import LayerPlan, ProbeImage
from dnd.stall import stage_batches

if TYPE_CHECKING:
    from dnd.activations.progress import PassAProgress
    from dnd.config import RunConfig
    from dnd.store.activations import ActivationWriter

MAX_NAMED_SKIPS = 50


@dataclass
class PassA:
    """Pass A's result: every layer's top-K over D_probe, the probe images it names, and what was
    read, used and skipped (with up to ``MAX_NAMED_SKIPS`` named per reason)."""

    topk: list[StreamingTopK]
    probe: dict[int, ProbeImage]
    images_read: int
    images_used: int
    per_source: dict[str, int]
    skip_counts: Counter = field(default_factory=Counter)
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    seconds: float = 0.0
    #: Images an earlier attempt had taken before its last save (a resumed pass A does not read them again).
    restored: int = 0

    def skip(self, reason: str, detail: str) -> None:
        self.skip_counts[reason] += 1
        if len(self.skipped[reason]) < MAX_NAMED_SKIPS:
            self.skipped[reason].append(detail)


def read_concurrency(config: RunConfig) -> int | None:
    """How many read-and-decode tasks may run at once (``probe.read_concurrency``; see its doc)."""
    import ray

    if config.probe.read_concurrency is not None:
        return config.probe.read_concurrency
    if config.target.num_gpus > 0:
        return None
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // 4)


def run_pass_a(config: RunConfig, layers: list[LayerPlan], read_tasks: list[Any], log: Callable[[str], None],
               kept: ActivationWriter | None = None, progress: PassAProgress | None = None) -> PassA:
    """Every probe image through the target model once; top-K per neuron kept on the driver.
    ``kept``, when given, also receives every used image's activations as they stream by
    (``step1.keep_activations``). ``progress`` saves the state every so often and, when an earlier
    attempt saved some, resumes from it: only what that attempt had not taken is read again."""
    result = PassA([StreamingTopK(len(layer.neurons), config.step1.top_k) for layer in layers], {}, 0, 0, {})
    seen: dict[int, ProbeImage] = {}
    per_source: Counter[str] = Counter()
    done, taken = progress.restore(result, seen, per_source) if progress is not None else (set(), {})
    result.restored = len(seen)
    if progress is not None and progress.saved is not None:
        log(f"step 1: pass A resumes from its last save: {len(done)} of {len(read_tasks)} read tasks finished, "
            f"{result.images_read} probe images read")
    source_rank: dict[str, int] = {}
    for task in read_tasks:
        source_rank.setdefault(task.source, len(source_rank))
    started = time.time()
    remaining = [i for i in range(len(read_tasks)) if i not in done]

    def save() -> None:  # the activations kept so far are committed with the state that counts them
        progress.save(result, seen, per_source, done, taken, kept.commit() if kept is not None else None)

    for batch in (_activation_stream(config, layers, read_tasks, remaining, taken) if remaining else ()):
        keep = _first_sightings(batch, result, seen, source_rank, per_source)
        if keep:
            index = np.asarray(keep)
            keys = batch["key"][index].astype(np.uint64)
            for i, state in enumerate(result.topk):
                state.update(batch[f"act_{i}"][index], keys)
            if kept is not None:
                kept.add([str(x) for x in batch["image_id"][index]], [str(x) for x in batch["ref"][index]],
                         [str(x) for x in batch["source"][index]], [batch[f"act_{i}"][index] for i in range(len(layers))])
        _finished_tasks(batch, taken, done)
        if progress is not None and progress.due(result.images_read):
            save()
        if result.images_read % 2000 < len(batch["key"]):
            log(f"step 1: {result.images_read} probe images through the target model")
    if progress is not None and remaining:
        # Pass A whole: a run that dies in pass B does not read the probing set again.
        save()
    result.seconds = time.time() - started
    result.images_used = len(seen)
    result.per_source = dict(per_source)
    log(f"step 1: {result.images_used} probe images used, {sum(result.skip_counts.values())} skipped")
    if not seen:
        from dnd.errors import DndError

        reasons = ", ".join(f"{n} {r}" for r, n in result.skip_counts.items()) or "none found"
        raise DndError(f"the probing set has no usable image ({reasons})")
    winners = set()
    for state in result.topk:
        winners.update(int(k) for k in state.winners())
    result.probe = {key: seen[key] for key in winners}
    return result


def _activation_stream(config: RunConfig, layers: list[LayerPlan], read_tasks: list[Any], remaining: list[int],
                       taken: dict[int, list[str]]) -> Any:
    """Batches of pass A: the ``remaining`` read tasks read, prepared and run through the actor pool."""
    import ray

    from dnd.activations.reading import read_and_prepare
    from dnd.models.actors import ProbeActivations
    from dnd.models.target import build_target

    # The driver needs only the input geometry; the actors build their own copies of the model.
    target = build_target(config.target.model, config.target.weights, None, config.target.options)
    read_kwargs = {"input_spec": target.input_spec, "preprocess": target.preprocess,
                   "storage_options": config.probe.storage_options,
                   "taken": {t: refs for t, refs in taken.items() if refs}}
    del target
    tasks = ray.data.from_items([{**read_tasks[i].as_row(), "task": i} for i in remaining])
    prepared = tasks.map_batches(read_and_prepare, batch_size=1, fn_kwargs=read_kwargs, num_cpus=0.25,
                                 compute=ray.data.TaskPoolStrategy(size=read_concurrency(config)))
    activations = prepared.map_batches(
        ProbeActivations,
        fn_constructor_kwargs={"target_config": config.target.model_dump(mode="json"),
                               "layers": [layer.name for layer in layers],
                               "neurons": [layer.neurons for layer in layers], "summary": config.step1.summary},
        batch_size=config.target.batch_size,
        **actor_pool_options(config.target),
    )
    return stage_batches(activations, "step 1 pass A (probe activations)", config.target, config)


def _finished_tasks(batch: dict[str, Any], taken: dict[int, list[str]], done: set[int]) -> None:
    """Note the refs of ``batch`` as taken; a read task all of whose rows are taken is done."""
    for task, size, ref in zip(batch["task"], batch["task_rows"], batch["ref"]):
        refs = taken.setdefault(int(task), [])
        refs.append(str(ref))
        if len(refs) >= int(size):
            done.add(int(task))
            del taken[int(task)]


def _first_sightings(batch: dict[str, Any], result: PassA, seen: dict[int, ProbeImage], source_rank: dict[str, int],
                     per_source: Counter[str]) -> list[int]:
    """The rows of ``batch`` that are images not seen before; failed reads and repeated bytes are
    counted as skips in ``result``, and ``seen`` and ``per_source`` learn the new images."""
    keep = []
    for row, (key, error) in enumerate(zip(batch["key"], batch["error"])):
        result.images_read += 1
        ref = str(batch["ref"][row])
        if error:
            result.skip(str(error).split(" (")[0], f"{ref}: {error}")
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
            result.skip("duplicate image", f"{image.ref}: same bytes as {seen[key].ref}")
            continue
        seen[key] = image
        per_source[image.source] += 1
        keep.append(row)
    return keep


def crop_requests(layers: list[LayerPlan], topk: list[StreamingTopK], probe: dict[int, ProbeImage],
                  linear_crops: str) -> list[dict[str, str]]:
    """Pass B's input: each top-K image once, with the [layer index, neuron] pairs it is top-K for
    (linear layers only when their crops come from Grad-CAM), in key order."""
    targets: dict[int, list[list[int]]] = defaultdict(list)
    for i, (layer, state) in enumerate(zip(layers, topk)):
        if not layer.has_map and linear_crops == "none":
            continue
        rows, cols = np.nonzero(np.isfinite(state.values))
        for position, slot in zip(rows, cols):
            targets[int(state.keys[position, slot])].append([i, layer.neurons[position]])
    return [{"image_id": probe[key].image_id, "ref": probe[key].ref, "targets": json.dumps(targets.get(key, []))}
            for key in sorted(probe)]


class CropMerger:
    """Takes pass B's scored crops into each layer's top-K as they stream in.

    D_cropped of a layer is the crops cut from that layer's own maps: the paper dissects one layer
    at a time, so its D_cropped never holds another layer's crops. Letting every crop compete
    everywhere put zoomed-in crops made for conv neurons at the top of linear layers (which make no
    crops), ahead of the whole images that show their concept. With ``crop_scope`` "neuron" a
    neuron's D_cropped narrows further, to the crops of its own maps (the authors' published
    procedure); "layer" lets a layer's crops compete for all of its neurons. Linear layers cropped
    through Grad-CAM keep their crops apart and take half of K from them (:func:`holistic_and_local`).
    """

    def __init__(self, layers: list[LayerPlan], topk: list[StreamingTopK], top_k: int, linear_crops: str,
                 crop_scope: str):
        self.final = [state.copy() for state in topk]
        self.positions = [{neuron: p for p, neuron in enumerate(layer.neurons)} for layer in layers]
        self.crop_scope = crop_scope
        self.local_only = {i: StreamingTopK(len(layer.neurons), top_k // 2) for i, layer in enumerate(layers)
                           if not layer.has_map and linear_crops == "gradcam" and top_k >= 2}
        #: Each crop's activation for the neurons whose maps made it, for the report.
        self.crop_activations: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)

    def add(self, keys: np.ndarray, made_for: list[list[list[int]]], activations: list[np.ndarray]) -> None:
        """``keys[j]`` is crop j's key, ``made_for[j]`` the [layer index, neuron] pairs that cut it,
        ``activations[i][j]`` its activations for layer i's requested neurons."""
        keys = np.asarray(keys, dtype=np.uint64)
        for i, state in enumerate(self.final):
            mine = np.array([any(layer_index == i for layer_index, _ in m) for m in made_for], dtype=bool)
            if mine.any():
                values = activations[i][mine]
                if self.crop_scope == "neuron":
                    values = own_crops_only(values, [m for m, keep in zip(made_for, mine) if keep], i, self.positions[i])
                self.local_only.get(i, state).update(values, keys[mine])
        for j, made in enumerate(made_for):
            for layer_index, neuron in made:
                position = self.positions[layer_index][neuron]
                self.crop_activations[(layer_index, position)].append(
                    (int(keys[j]), float(activations[layer_index][j][position])))

    def finish(self) -> list[StreamingTopK]:
        for i, crops_state in self.local_only.items():
            self.final[i] = holistic_and_local(self.final[i], crops_state)
        return self.final
