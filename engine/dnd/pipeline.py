"""The one place that knows the order of the stages of a run.

validate (model, layers, neurons, probe, output, keys) → Step 1 (pass A: top-K; pass B: attention crops) →
Step 2A (captions) → Step 2B (candidate concepts) → Step 3 (generation, scoring, labels) →
neurons/ Parquet (in parts, dnd.store.neurons) → _SUCCESS (written last).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from dnd.config import RunConfig, load_config, resolve_neurons
from dnd.errors import ConfigError
from dnd.records import LayerPlan, NeuronCrop, NeuronRow, Step1Result, TopImage
from dnd.stage_errors import named_stage

if TYPE_CHECKING:
    from dnd.store.layout import RunLayout

#: How a failed stage is named to the user (by the function that runs it).
STAGE_NAMES = {
    "step2a_captions": "step 2A (captions)",
    "step2b_concepts": "step 2B (candidate concepts)",
    "step3_selection": "step 3 (generation and selection)",
    "clip_dissect": "CLIP-Dissect",
    "step2c_clip_dissect_candidates": "CLIP-Dissect candidates",
}


def _log_to_stderr(message: str) -> None:
    print(f"[dnd] {message}", file=sys.stderr, flush=True)


def plan_layers(config: RunConfig) -> list[Any]:
    """Build the target once on the driver to check layers and neuron ranges before any Ray work."""
    from dnd.models.recorder import layer_sizes, resolve_layers
    from dnd.models.target import build_target

    target = build_target(config.target.model, config.target.weights, config.target.checkpoint, config.target.options)
    resolve_layers(target.module, config.layers)
    sizes = layer_sizes(target, config.layers)
    plans = []
    for name in config.layers:
        if name not in sizes:
            raise ConfigError(
                f"layer {name!r} produces no (N,C,H,W), (N,T,D) or (N,D) tensor in a forward pass, so it has no neurons"
            )
        size, shape = sizes[name]
        neurons = resolve_neurons(config.neuron_spec(name), size, name)
        plans.append(LayerPlan(name=name, size=size, neurons=neurons, has_map=len(shape) >= 2))
    return plans


def init_ray(config: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    else:
        from dnd.ray_address import refuse_dead_recorded_head

        refuse_dead_recorded_head()  # ray.init() would join the head `ray start` recorded, dead or alive
        if config.ray.num_cpus:
            kwargs["num_cpus"] = config.ray.num_cpus
        if config.ray.object_store_memory:
            kwargs["object_store_memory"] = config.ray.object_store_memory
        kwargs["include_dashboard"] = False
    if not address:
        # A local cluster's workers must import this very package (an editable checkout included)
        # and share the driver's offline setting; on a remote cluster the job's runtime_env decides.
        engine_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(filter(None, [engine_dir, os.environ.get("PYTHONPATH", "")]))
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}}
    from dnd.ray_output import quiet_ray_data, ray_init_options, stderr_is_terminal

    ray.init(**kwargs, **ray_init_options())
    import ray.data

    quiet_ray_data()
    ctx = ray.data.DataContext.get_current()
    # Ray Data's bars on a terminal; in a log file they would be thousands of redraws.
    ctx.enable_progress_bars = stderr_is_terminal()


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for package in ("dnd", "ray", "torch", "torchvision", "transformers", "diffusers", "openai", "pyarrow", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def dissect(config: RunConfig, log: Callable[[str], None] | None = None, overwrite: bool = False, **overrides: Any):
    """Run every stage for ``config`` and return :class:`dnd.results.Results`.

    A URI holding an unfinished (or finished) run of the same config is resumed: Step 1's checkpoint
    and the caches answer for what was done. A different config there is refused unless ``overwrite``.
    """
    from dnd.backends import load_backends
    from dnd.probe.sources import plan_reads
    from dnd.results import Results
    from dnd.store.layout import RunLayout
    from dnd.store.neurons import write_neurons

    log = log or _log_to_stderr
    load_backends()
    config = load_config(config, [f"{k}={v}" for k, v in overrides.items()]) if not isinstance(config, RunConfig) or overrides else config
    started = time.time()
    # Storage first: a missing bucket or bad credentials must fail before any model is built.
    layout = RunLayout(config.output.uri, config.output.storage_options, config.output.cache_uri,
                       config.output.step1_uri)
    layout.check_writable()
    layers = plan_layers(config)
    read_tasks, source_counts = plan_reads(config.probe)
    stages = build_later_stages(config)
    if config.faithfulness is not None:
        from dnd.faithfulness.sources import check_source

        check_source(config)
    from dnd.store.runstate import claim

    # Claimed only once every check has passed: a config with a typo leaves the URI untouched.
    run_state = claim(layout, config, overwrite, log)
    log(
        f"dissecting {config.target.model} layers {[f'{l.name} ({len(l.neurons)} neurons)' for l in layers]} "
        f"on {sum(source_counts.values())} probe images -> {config.output.uri}"
    )
    init_ray(config)
    step1, step1_resumed = step1_once(config, layers, read_tasks, layout, log)
    rows = assemble_rows(step1)
    counts = dict(step1.counts)
    timings = dict(step1.timings)
    extra: dict[str, Any] = {}
    for stage in stages:
        stage_started = time.time()
        with named_stage(STAGE_NAMES.get(stage.__name__, stage.__name__)):
            stage_counts = stage(config, step1, rows, layout, log)
        timings[f"{stage.__name__}_s"] = time.time() - stage_started
        extra.update(stage_counts or {})

    # In parts streamed from the rows, never as one table: see dnd.store.neurons.
    writing_started = time.time()
    write_neurons(layout, rows)
    timings["neurons_write_s"] = time.time() - writing_started
    if config.faithfulness is not None:
        # Scored from the written table, as dnd score scores a finished run.
        from dnd.faithfulness.score import score_run

        scoring_started = time.time()
        with named_stage("faithfulness"):
            extra["faithfulness"] = score_run(layout, config, config.faithfulness, log)
        timings["faithfulness_s"] = time.time() - scoring_started
    status: dict[str, int] = {}
    for row in rows:
        status[row.status] = status.get(row.status, 0) + 1
    timings["total_s"] = time.time() - started
    manifest = {
        "dnd_version": __import__("dnd").__version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config.model_dump(mode="json"),
        # Which method ran, and every option this run sets otherwise: a paper run reads as one.
        "method": {"name": config.method, "differs": config.differs_from_method()},
        "versions": _versions(),
        "layers": [{"name": l.name, "size": l.size, "neurons": len(l.neurons), "spatial": l.has_map} for l in layers],
        "counts": {**counts, "neurons": len(rows), "status": status, "probe_sources": source_counts},
        "skipped": step1.skipped,
        "run": {**run_state, "step1_from_checkpoint": step1_resumed},
        # What this attempt asked of each model; a resumed run's counts exclude what earlier attempts did.
        "model_calls": model_calls(step1, step1_resumed, extra),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        **extra,
    }
    layout.write_json(manifest, "_SUCCESS")
    log(f"done in {timings['total_s']:.1f}s: {len(rows)} neurons, status {status}; results at {config.output.uri}")
    return Results(config.output.uri, config.output.storage_options)


def step1_once(config: RunConfig, layers: list[Any], read_tasks: list[Any], layout: RunLayout,
               log: Callable[[str], None]) -> tuple[Step1Result, bool]:
    """Step 1's result and whether an earlier attempt of this run had finished it (its checkpoint)."""
    from dnd.activations.checkpoint import load_step1, save_step1, step1_digest
    from dnd.activations.progress import PassAProgress
    from dnd.cropping.progress import PassBProgress

    step1_key = step1_digest(config)
    if layout.shares_step1:
        claim_shared_step1(layout.step1, step1_key)
    step1 = load_step1(layout.step1, step1_key)
    if step1 is not None:
        log(f"step 1: finished earlier{' (shared Step 1 at ' + layout.step1.uri + ')' if layout.shares_step1 else ''}; "
            "top-K and crops loaded from its checkpoint")
        return step1, True
    with named_stage("step 1"):
        step1 = run_step1(config, layers, read_tasks, layout, log, step1_key)
    save_step1(layout.step1, step1_key, step1)
    PassAProgress.discard(layout.step1, step1_key)
    PassBProgress.discard(layout.step1, step1_key)
    return step1, False


def recorded_step1(step1_layout: RunLayout) -> str | None:
    """The digest of the Step 1 a shared Step 1 location holds (None: it holds none yet)."""
    return (step1_layout.read_json("_STEP1") or {}).get("step1_digest")


def claim_shared_step1(step1_layout: RunLayout, step1_key: str) -> None:
    """A shared Step 1 location serves one Step 1 only: its images/ and activations/ are not keyed by
    digest, so a run with other Step 1 settings must not write over what another run reads."""
    recorded = recorded_step1(step1_layout)
    if recorded is not None and recorded != step1_key:
        raise ConfigError(
            f"output.step1_uri {step1_layout.uri!r} holds the Step 1 of another target, probe, layers, neurons or "
            f"step1 settings (digest {recorded}, this run's is {step1_key}); runs share a Step 1 only when all of "
            "those are equal: use another output.step1_uri"
        )
    step1_layout.write_json({"step1_digest": step1_key}, "_STEP1")


def run_step1(config: RunConfig, layers: list[Any], read_tasks: list[Any], layout: RunLayout,
              log: Callable[[str], None], step1_key: str) -> Any:
    """Step 1: pass A (every probe image, streaming top-K), then pass B (the top-K images read back
    once each, attention crops cut and scored), the crops merged into the final top-K as they come.
    ``step1_key``: Step 1's digest, which names pass A's progress saves."""
    from dnd.activations.progress import PassAProgress
    from dnd.activations.step1 import CropMerger, crop_requests, run_pass_a
    from dnd.cropping.progress import PassBProgress
    from dnd.cropping.stage import run_pass_b
    from dnd.store.activations import ActivationWriter

    step1 = config.step1
    progress = PassAProgress(layout.step1, step1_key, config.output.checkpoint_images,
                             config.output.checkpoint_seconds)
    resume = progress.saved.get("kept") if progress.saved is not None else None
    kept = ActivationWriter(layout.step1, layers, step1.activations_dtype, resume=resume) if step1.keep_activations else None
    try:
        found = run_pass_a(config, layers, read_tasks, log, kept=kept, progress=progress)
    except BaseException:
        if kept is not None:
            kept.abort()
        raise
    kept_counts = kept.close() if kept is not None else None
    merger = CropMerger(layers, found.topk, step1.top_k, step1.linear_crops, step1.crop_scope)
    requests = crop_requests(layers, found.topk, found.probe, step1.linear_crops)
    pass_b = PassBProgress(layout.step1, step1_key, config.output.checkpoint_images, config.output.checkpoint_seconds,
                           merger)
    if pass_b.saved is not None:
        log(f"step 1: pass B resumes from its last save: {len(pass_b.saved['done'])} of {len(requests)} top images "
            "cropped and scored")
    cropped = run_pass_b(config, layers, found.probe, requests, layout, merger.add, progress=pass_b)
    for ref, error in cropped.unreadable:
        found.skip("unreadable on second read", f"{ref}: {error}")
    log(f"step 1: {len(found.probe)} top images re-read once each, {cropped.crop_count} attention crops scored")
    counts = {
        "images_read": found.images_read,
        "images_used": found.images_used,
        "images_skipped": dict(found.skip_counts),
        "images_per_source": found.per_source,
        "top_images_unique": len(found.probe),
        "crops": cropped.crop_count,
        "target_forward_images": found.images_used + len(found.probe) + cropped.crop_count,
        # Images an earlier attempt of pass A had run through the target before its last save.
        "pass_a_restored_images": found.restored,
        # Top images and crops an earlier attempt of pass B had run through the target likewise.
        "pass_b_restored_images": cropped.resumed + cropped.resumed_crops,
    }
    if kept_counts is not None:
        counts["activations_kept"] = kept_counts
    timings = {"step1_activations_s": found.seconds, "step1_crops_s": cropped.seconds}
    return Step1Result(layers, merger.finish(), found.probe, cropped.crops, dict(merger.crop_activations), counts,
                       {k: v for k, v in found.skipped.items()}, timings)


def model_calls(step1: Step1Result, step1_resumed: bool, extra: dict[str, Any]) -> dict[str, int]:
    """Inputs each model family computed in this attempt (cache misses), for ``_SUCCESS``."""

    def misses(section: dict | None) -> int:
        return int(((section or {}).get("cache") or {}).get("misses", 0))

    # Step 3's parsimony round (the labels' sub-phrases) generates and measures images of its own.
    parsimony = extra.get("parsimony") or {}
    return {
        "target_probe_images": 0 if step1_resumed else int(step1.counts.get("target_forward_images", 0))
        - int(step1.counts.get("pass_a_restored_images", 0)) - int(step1.counts.get("pass_b_restored_images", 0)),
        "captioner_images": misses(extra.get("captions")),
        "summarizer_requests": misses(extra.get("concepts")),
        "generator_images": misses(extra.get("generation")) + misses(parsimony.get("generation")),
        "target_generated_images": int((extra.get("generation") or {}).get("target_forward_images", 0))
        + int(parsimony.get("target_forward_images", 0)),
        "embedder_inputs": misses(extra.get("embeddings")) + misses(extra.get("clip_dissect"))
        + misses(extra.get("clip_dissect_candidates")),
    }


def build_later_stages(config: RunConfig) -> list[Callable[..., Any]]:
    """Steps 2 and 3 (or the method that replaces them), checked before any model work (missing API
    keys fail here, not an hour in)."""
    if config.method == "clip-dissect":
        from dnd.methods.clip_dissect import check, run_clip_dissect

        concepts = check(config)

        def clip_dissect(config, step1, rows, layout, log):
            return run_clip_dissect(config, step1, rows, layout, log, concepts)

        return [clip_dissect]
    if config.captioner is None:
        return []
    from dnd.captioning.base import CAPTIONERS
    from dnd.captioning.stage import run_captions
    from dnd.concepts.base import SUMMARIZERS
    from dnd.concepts.stage import build_summarizer, run_concepts
    from dnd.generation.base import GENERATORS
    from dnd.registry import check_options, preflight_backend
    from dnd.selection.embedder import EMBEDDERS
    from dnd.selection.scoring import IMAGE_PRODUCT_FUNCTIONS
    from dnd.selection.stage import label_without_selection

    # Every backend's options are checked here, on the driver: a typo is one line now, not a
    # traceback from an actor constructor once Ray has started the stage.
    check_options(CAPTIONERS, config.captioner, "captioner")
    preflight_backend(CAPTIONERS, config.captioner)
    check_options(SUMMARIZERS, config.summarizer, "summarizer")
    summarizer = build_summarizer(config)

    def step2a_captions(config, step1, rows, layout, log):
        return run_captions(config, step1, rows, layout, log)

    def step2b_concepts(config, step1, rows, layout, log):
        return run_concepts(config, step1, rows, layout, log, summarizer=summarizer)

    stages = [step2a_captions, step2b_concepts]
    if config.candidates.clip_dissect_top > 0:
        from dnd.methods.clip_dissect import add_candidates, check

        concepts = check(config)

        def step2c_clip_dissect_candidates(config, step1, rows, layout, log):
            return add_candidates(config, step1, rows, layout, log, concepts)

        stages.append(step2c_clip_dissect_candidates)
    if config.selection.enabled:
        check_options(GENERATORS, config.generator, "generator")
        preflight_backend(GENERATORS, config.generator)
        if config.selection.embedder is not None:
            check_options(EMBEDDERS, config.selection.embedder, "selection.embedder")
        elif config.selection.scoring in IMAGE_PRODUCT_FUNCTIONS:
            raise ConfigError(
                f"selection.scoring {config.selection.scoring!r} needs CLIP image embeddings, but selection.embedder "
                f"is null; set an embedder or choose scoring 'mean' or 'topk_squared'"
            )

        stages.append(step3_selection)
    else:

        def step3_off(config, step1, rows, layout, log):
            label_without_selection(rows)
            return {}

        stages.append(step3_off)
    return stages


def step3_selection(config: RunConfig, step1: Step1Result, rows: list[NeuronRow], layout: RunLayout,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Step 3 in order: generate → measure → embed → score → (parsimony: generate, measure and embed
    the labels' sub-phrases) → label. Returns its counts for ``_SUCCESS``."""
    from dnd.generation.stage import generated_dataset, run_generation
    from dnd.selection import stage as step3

    state = step3.start(rows)
    if state is None:
        return {}

    def generate(concepts: list[str]) -> tuple[Any, dict]:
        return run_generation(config, concepts, layout, log)

    def generated_images() -> Any:
        return generated_dataset(layout, state.generated, config.output.storage_options)

    state.generated, generation_counts = generate(state.concepts)
    state.counts.update(generation_counts)
    step3.measure_generated(config, step1, state, layout, generated_images, log)
    if config.selection.embedder is not None:
        step3.embed(config, state, layout, generated_images, log)
    step3.score(config, state)
    if config.selection.parsimony_share is not None:
        step3.parsimony_round(config, step1, state, layout, generate, generated_images, log)
    step3.label(config, state)
    return state.counts


def assemble_rows(step1: Step1Result) -> list[NeuronRow]:
    """One neurons-table row per (layer, neuron) from the final top-K; Steps 2–3 fill the rest."""
    import numpy as np

    rows = []
    for i, (layer, state) in enumerate(zip(step1.layers, step1.topk)):
        for position, neuron in enumerate(layer.neurons):
            top = []
            for value, key in zip(state.values[position], state.keys[position]):
                if not np.isfinite(value):
                    continue
                key = int(key)
                crop = step1.crops.get(key)
                if crop is not None:
                    top.append(TopImage(crop.image_id, float(value), True, crop.parent_id, crop.box))
                else:
                    top.append(TopImage(step1.probe[key].image_id, float(value), False))
            # Most activating first, then by id: not the order Ray happened to deliver pass B's batches in.
            made = sorted(step1.crop_activations.get((i, position), []),
                          key=lambda pair: (-pair[1], step1.crops[pair[0]].image_id))
            crops = [NeuronCrop(step1.crops[key].image_id, step1.crops[key].parent_id, step1.crops[key].box, value)
                     for key, value in made]
            row = NeuronRow(layer.name, neuron, top_images=top, crops=crops, nan_images=int(state.nan_counts[position]))
            if not top:
                row.fail("no image gave this neuron a finite activation")
            rows.append(row)
    return rows
