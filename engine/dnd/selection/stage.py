"""Step 3's sub-stages after generation: measure, embed, score, parsimony, label.

``pipeline.py`` runs them in that order on one :class:`Step3` state, and hands in the generation
step (``generation/``) as callables, so this package never imports another step.

Every generated image goes through the target model once, for all neurons of all layers; each
neuron keeps only the activations of its own candidates' images (N x Q values), so driver memory
grows with neurons x N x Q, not with neurons x all generated images.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dnd.records import Candidate, NeuronRow, embedding_schema
from dnd.stall import stage_batches
from dnd.store.cache import ContentCache, content_key

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.records import Step1Result
    from dnd.store.layout import RunLayout

SCORE_NAMES = ("mean", "topk_squared", "image_products", "topk_squared_image_products")


def embedder_key(stage: Any) -> str:
    from dnd.selection.embedder import EMBEDDERS
    from dnd.registry import backend_code_digest

    return content_key("embed", stage.backend, backend_code_digest(EMBEDDERS, stage.backend),
                       json.dumps(stage.options, sort_keys=True, default=str))


class EmbedActor:
    """One CLIP embedder; rows carry either an encoded image (``data``) or a text (``text``)."""

    def __init__(self, stage_config: dict):
        from dnd.config import EmbedderConfig
        from dnd.registry import build_stage_backend
        from dnd.selection.embedder import EMBEDDERS

        self.embedder = build_stage_backend(EMBEDDERS, EmbedderConfig.model_validate(stage_config))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from dnd.models.oom import halving_on_oom

        return halving_on_oom(self._embed, batch)

    def _embed(self, batch: dict[str, Any]) -> dict[str, Any]:
        from dnd.probe.decode import decode_rgb

        if "text" in batch:
            vectors = self.embedder.embed_texts([str(t) for t in batch["text"]])
            ids = batch["text"]
        else:
            vectors = self.embedder.embed_images([decode_rgb(bytes(d)) for d in batch["data"]])
            ids = batch["image_id"]
        return {"id": ids, "embedding": np.asarray(vectors, dtype=np.float32)}


def embed_items(config: RunConfig, layout: RunLayout, dataset: Any, keys: dict[str, str], log: Callable[[str], None],
           what: str, tally: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Embeddings for ``keys`` (item -> cache key): cached ones, plus ``dataset(missing items)``'s rows
    (``text`` or ``image_id`` and encoded ``data``) for the rest, through the run's embedder."""
    from dnd.models.pools import actor_pool_options

    stage = config.selection.embedder
    cache = ContentCache(layout.cache, "embeddings", embedding_schema(), config.output.storage_options)
    found = cache.lookup(keys.values())
    out = {item: np.asarray(found[key]["embedding"], dtype=np.float32) for item, key in keys.items() if key in found}
    missing = {item for item in keys if item not in out}
    if missing:
        embedded = dataset(missing).map_batches(
            EmbedActor, fn_constructor_kwargs={"stage_config": stage.model_dump(mode="json")},
            batch_size=stage.batch_size, **actor_pool_options(stage),
        )
        with cache.writer() as writer:
            for batch in stage_batches(embedded, f"{what} (embedder)", stage, config):
                for item, vector in zip(batch["id"], batch["embedding"]):
                    item = str(item)
                    out[item] = np.asarray(vector, dtype=np.float32)
                    writer.add({"key": keys[item], "embedding": out[item].tolist()})
    log(f"{what}: {len(keys)} embedded ({len(keys) - len(missing)} from cache)")
    if tally is not None:  # cache hits and embedder calls, for the manifest
        for name, n in cache.stats.as_dict().items():
            tally[name] = tally.get(name, 0) + n
    return out


@dataclass
class Step3:
    """Step 3's working state, handed from one sub-stage to the next by ``pipeline.py``.

    ``active`` are the neurons with candidates (their rows, filled in place); ``concepts`` the run's
    unique candidate concepts, and ``units[r][j]`` the index in it of row r's candidate j; ``generated`` the
    generator's images of each concept (a :class:`dnd.records.GeneratedSet`); ``values`` and
    ``peaks`` per neuron the summary activation and the map peak on each of its candidates' images;
    ``chosen`` per neuron the index of the candidate the scoring function picked.
    """

    active: list[NeuronRow]
    concepts: list[str]
    units: list[list[int]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    generated: Any = None
    values: list[dict[str, float]] = field(default_factory=list)
    peaks: list[dict[str, float]] = field(default_factory=list)
    image_emb: dict[str, np.ndarray] = field(default_factory=dict)
    text_emb: dict[str, np.ndarray] = field(default_factory=dict)
    chosen: list[int | None] = field(default_factory=list)
    started: float = field(default_factory=time.time)


def start(rows: list[NeuronRow]) -> Step3 | None:
    """The neurons Step 3 labels and the unique concepts to generate; None when no neuron has a
    candidate. Candidates repeated within one neuron (same text up to case/space) are scored once."""
    from dnd.selection.dedupe import unique_concepts

    active = [r for r in rows if r.status == "ok" and r.candidates]
    if not active:
        return None
    concepts, index = unique_concepts([[c.concept for c in r.candidates] for r in active])
    units = []
    for row, positions in zip(active, index):
        kept, mine = [], []
        for candidate, u in zip(row.candidates, positions):
            if u not in mine:
                mine.append(u)
                kept.append(replace(candidate))
        row.candidates = kept
        units.append(mine)
    n = len(active)
    return Step3(active, concepts, units, values=[{} for _ in range(n)], peaks=[{} for _ in range(n)],
                 chosen=[None] * n)


def measure(config: RunConfig, step1: Step1Result, state: Step3, layout: RunLayout, us: "range | set[int]",
            generated_images: Callable[[], Any], log: Callable[[str], None]) -> tuple[int, dict]:
    """The target model on every usable generated image of concepts ``us`` (cached per image, so a
    resumed run sends only unseen ones); each neuron keeps its own candidates' activations and peaks.
    ``generated_images()`` is a dataset (image_id, data) of the run's usable generated images.
    Returns (images sent through the target, cache counts)."""
    from dnd.selection.generated_activations import generated_activations

    generated = state.generated
    owner = {image: u for u in us for image in generated.usable(u)}
    if not owner:
        return 0, {}
    layer_index = {layer.name: i for i, layer in enumerate(step1.layers)}
    position = [{n: p for p, n in enumerate(layer.neurons)} for layer in step1.layers]
    needs: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # u -> (row, layer, position)
    for r, row in enumerate(state.active):
        li = layer_index[row.layer]
        for u in state.units[r]:
            if u in us:
                needs[u].append((r, li, position[li][row.neuron]))

    def unseen(ids: set[str]):
        return generated_images().map_batches(_keep, fn_kwargs={"wanted": sorted(ids)}, batch_format="numpy", num_cpus=0.25)

    per_image, target_counts = generated_activations(
        config, step1.layers, layout, unseen, {image: generated.entry_keys[image] for image in owner}, log)
    for image, measured in per_image.items():
        for r, li, p in needs.get(owner[image], ()):
            state.values[r][image] = float(measured.summaries[li][p])
            state.peaks[r][image] = float(measured.peaks[li][p])
    return target_counts["target_forward_images"], target_counts["cache"]


def measure_generated(config: RunConfig, step1: Step1Result, state: Step3, layout: RunLayout, generated_images: Callable[[], Any],
                      log: Callable[[str], None]) -> None:
    """The target model on every usable generated image of the first round, once."""
    forward, cache_counts = measure(config, step1, state, layout, range(len(state.concepts)), generated_images, log)
    state.counts["generation"]["target_forward_images"] = forward
    if cache_counts:
        state.counts["generation"]["target_cache"] = cache_counts


def _embed_tally(state: Step3) -> dict[str, int]:
    return state.counts.setdefault("embeddings", {"cache": {}})["cache"]


def embed_texts(config: RunConfig, state: Step3, layout: RunLayout, texts: set[str], log: Callable[[str], None]) -> None:
    """CLIP text embeddings of candidate concepts (cached), into ``state.text_emb``."""
    import ray

    model_key = embedder_key(config.selection.embedder)
    state.text_emb.update(embed_items(
        config, layout, lambda items: ray.data.from_items([{"text": t} for t in sorted(items)]),
        {t: content_key(model_key, "text", t) for t in texts}, log, "step 3: candidate concepts", _embed_tally(state),
    ))


def embed(config: RunConfig, state: Step3, layout: RunLayout, generated_images: Callable[[], Any], log: Callable[[str], None]) -> None:
    """CLIP embeddings of the neurons' top images, the generated images and the candidate texts."""
    from dnd.store.images import stored_images

    model_key = embedder_key(config.selection.embedder)
    top_ids = {t.image_id for r in state.active for t in r.top_images}
    gen_ids = {image for u in range(len(state.concepts)) for image in state.generated.usable(u)}

    def images_to_embed(ids: set[str]):
        # One pass (one actor pool) for the neurons' top images and the generated images.
        stored = stored_images(layout, ids & top_ids)
        made = generated_images().map_batches(_keep, fn_kwargs={"wanted": sorted(ids & gen_ids)}, batch_format="numpy",
                                             num_cpus=0.25)
        return stored.union(made)

    tally = _embed_tally(state)
    state.image_emb = embed_items(
        config, layout, images_to_embed,
        {i: content_key(model_key, "image", i) for i in top_ids | gen_ids}, log, "step 3: top and generated images", tally,
    )
    embed_texts(config, state, layout, {c.concept for r in state.active for c in r.candidates}, log)


def score(config: RunConfig, state: Step3) -> None:
    """The paper's scoring functions (A.1.4) for every candidate, and each neuron's choice."""
    from dnd.selection.scoring import score_all, select_best

    for r, row in enumerate(state.active):
        candidates = row.candidates
        image_ids, concept_of = [], []
        for j, u in enumerate(state.units[r]):
            usable = [i for i in state.generated.usable(u) if i in state.values[r]]
            image_ids.extend(usable)
            concept_of.extend([j] * len(usable))
        activations = np.array([state.values[r][i] for i in image_ids], dtype=np.float64)
        top_emb = gen_emb = None
        if config.selection.embedder is not None:
            tops = [state.image_emb[t.image_id] for t in row.top_images if t.image_id in state.image_emb]
            if tops and all(i in state.image_emb for i in image_ids):
                top_emb = np.stack(tops)
                gen_emb = np.stack([state.image_emb[i] for i in image_ids]) if image_ids else np.zeros((0, tops[0].shape[0]))
        scores = score_all(activations, np.asarray(concept_of, dtype=np.int64), len(candidates), top_emb, gen_emb,
                           beta=config.selection.beta, t=config.selection.top_t)
        chosen = scores[config.selection.scoring]
        for j, candidate in enumerate(candidates):
            candidate.scores = {name: _finite_or_none(scores[name][j]) for name in SCORE_NAMES}
            candidate.score = _finite_or_none(chosen[j])
        if np.isnan(chosen).all() or not np.isfinite(chosen).any():
            # No generated image for any candidate (all refused) or the function is unavailable:
            # fall back to the paper's Step-3-free label, the first summary's candidate.
            row.warn("warning: no generated image could score the candidates; label is the first summary")
            continue
        state.chosen[r] = select_best(chosen, [c.concept for c in candidates])


def parsimony_round(config: RunConfig, step1: Step1Result, state: Step3, layout: RunLayout,
                    generate: Callable[[list[str]], tuple[Any, dict]], generated_images: Callable[[], Any],
                    log: Callable[[str], None]) -> None:
    """Attach each chosen label's sub-phrases as candidates; generate (``generate(concepts)`` returns
    a GeneratedSet and its counts), measure and embed the ones the run has not seen yet."""
    from dnd.selection.dedupe import concept_key
    from dnd.selection.parsimony import sub_phrases

    concepts = state.concepts
    known = {concept_key(c): u for u, c in enumerate(concepts)}
    first_new = len(concepts)
    attached: set[int] = set()  # concepts that became some neuron's sub-phrase candidates
    for r, row in enumerate(state.active):
        if state.chosen[r] is None:
            continue
        mine = {concept_key(c.concept) for c in row.candidates}
        for phrase in sub_phrases(row.candidates[state.chosen[r]].concept):
            key = concept_key(phrase)
            if key in mine:
                continue
            if key not in known:
                known[key] = len(concepts)
                concepts.append(phrase)
            mine.add(key)
            attached.add(known[key])
            row.candidates.append(Candidate(phrase, sub_phrase=True))
            state.units[r].append(known[key])
    new = concepts[first_new:]
    extra: dict[str, Any] = {"sub_phrases": len(attached), "new_concepts": len(new)}
    if new:
        more, more_counts = generate(new)
        state.generated.concepts = list(concepts)  # the first round's list, now with the sub-phrases
        state.generated.images.extend(more.images)
        state.generated.entry_keys.update(more.entry_keys)
        extra["generation"] = more_counts["generation"]
    if attached:
        # A sub-phrase that was another neuron's candidate has images already; this neuron's
        # activations on them come from the per-image cache.
        forward, cache_counts = measure(config, step1, state, layout, attached, generated_images, log)
        extra["target_forward_images"] = forward
        if cache_counts:
            extra["target_cache"] = cache_counts
        if config.selection.embedder is not None:
            embed_texts(config, state, layout, {concepts[u] for u in attached}, log)
    state.counts["parsimony"] = extra


def label(config: RunConfig, state: Step3) -> None:
    """Each neuron's label (parsimony's choice when on) and multiple labels (A.7); candidates are
    reported label first, then best score first."""
    from dnd.selection.multilabel import multiple_labels, text_similarity
    from dnd.selection.parsimony import simplest_sufficient, supported_labels

    parsimony = config.selection.parsimony_share
    for r, row in enumerate(state.active):
        candidates = row.candidates
        names = [c.concept for c in candidates]
        per_candidate = []  # per candidate: the neuron's map peak on each of its generated images
        for candidate, u in zip(candidates, state.units[r]):
            made = state.generated.images[u]
            # Image i of every concept has the same seed: NaN keeps refused images' places so that
            # parsimony can pair image i of one concept with image i of another.
            acts = np.array([state.values[r].get(image, np.nan) if refused is None else np.nan for image, refused in made],
                            dtype=np.float64)
            candidate.images = int(np.isfinite(acts).sum())
            reasons = sorted({reason for _, reason in made if reason})
            candidate.refused = "; ".join(reasons) or None
            candidate.mean_activation = float(np.nanmean(acts)) if candidate.images else None
            if candidate.scores is None:  # a sub-phrase: no scoring function saw it
                candidate.scores = {name: None for name in SCORE_NAMES}
            if candidate.sub_phrase is None:
                candidate.sub_phrase = False
            per_candidate.append(np.array([state.peaks[r].get(image, np.nan) if refused is None else np.nan
                                           for image, refused in made], dtype=np.float64))
        best = state.chosen[r]
        if best is None:
            row.label = names[0]
            row.labels = [names[0]]
            continue
        # The neuron's floor on Step 3's images: its mean peak on the least related concept it was
        # shown (sub-phrases such as "circle" of "red circle" usually supply one).
        means = [float(np.nanmean(p)) for p in per_candidate if np.isfinite(p).any()]
        baseline = float(min(means)) if means else float("nan")
        if parsimony is not None:
            best, _share = simplest_sufficient(names, best, per_candidate, baseline, parsimony)
        row.label = names[best]
        # The label leads the multiple labels even when parsimony chose it over a higher score;
        # sub-phrases the paper's function did not score take part only through parsimony.
        ranked = np.array([np.inf if j == best else (c.score if c.score is not None else np.nan)
                           for j, c in enumerate(candidates)], dtype=np.float64)
        if state.text_emb and all(n in state.text_emb for n in names):
            similarity = text_similarity(np.stack([state.text_emb[n] for n in names]))
            labels = multiple_labels(names, ranked, similarity, config.selection.multilabel_similarity)
        else:
            labels = [names[best]]
        if config.selection.multilabel_share is not None:
            kept = supported_labels(names, [names.index(name) for name in labels], per_candidate, baseline,
                                    config.selection.multilabel_share)
            labels = [names[j] for j in kept]
        row.labels = labels
        # Candidates are reported label first, then best score first: the table reads as the ranking it is.
        order = sorted(range(len(candidates)), key=lambda j: (j != best, -(candidates[j].score if candidates[j].score is not None else -np.inf), j))
        row.candidates = [candidates[j] for j in order]
    state.counts["selection"] = {"neurons_scored": len(state.active), "seconds": round(time.time() - state.started, 3)}


def label_without_selection(rows: list[NeuronRow]) -> None:
    """Step 3 switched off: the first summary's candidate is the label (paper 3.3)."""
    for row in rows:
        if row.status == "ok" and row.candidates:
            names = []
            for c in row.candidates:
                if c.concept not in names:
                    names.append(c.concept)
            row.label = names[0]
            row.labels = names


def _keep(batch: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    mask = np.isin(batch["image_id"].astype(str), np.asarray(wanted, dtype=str))
    return {name: values[mask] for name, values in batch.items()}


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None

