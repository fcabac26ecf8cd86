"""Step 3, second half: activations and CLIP embeddings of the generated images, then scoring.

Every generated image goes through the target model once, for all neurons of all layers; each
neuron keeps only the activations of its own candidates' images (N x Q values), so driver memory
grows with neurons x N x Q, not with neurons x all generated images.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any, Callable

import numpy as np

from dnd.store.cache import ContentCache, content_key

SCORE_NAMES = ("mean", "topk_squared", "image_products", "topk_squared_image_products")


def embedding_schema():
    import pyarrow as pa

    return pa.schema([pa.field("key", pa.string()), pa.field("embedding", pa.list_(pa.float32()))])


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


def _embed(config: Any, layout: Any, dataset: Any, keys: dict[str, str], log: Callable[[str], None],
           what: str, tally: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Embeddings for ``keys`` (item -> cache key): cached ones, plus ``dataset``'s rows for the rest."""
    from dnd.activations.step1 import _pool_kwargs

    stage = config.selection.embedder
    cache = ContentCache(layout.cache, "embeddings", embedding_schema(), config.output.storage_options)
    found = cache.lookup(keys.values())
    out = {item: np.asarray(found[key]["embedding"], dtype=np.float32) for item, key in keys.items() if key in found}
    missing = {item for item in keys if item not in out}
    if missing:
        embedded = dataset(missing).map_batches(
            EmbedActor, fn_constructor_kwargs={"stage_config": stage.model_dump(mode="json")},
            batch_size=stage.batch_size, **_pool_kwargs(stage),
        )
        with cache.writer() as writer:
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                for item, vector in zip(batch["id"], batch["embedding"]):
                    item = str(item)
                    out[item] = np.asarray(vector, dtype=np.float32)
                    writer.add({"key": keys[item], "embedding": out[item].tolist()})
    log(f"step 3: {len(keys)} {what} embedded ({len(keys) - len(missing)} from cache)")
    if tally is not None:  # cache hits and embedder calls, for the manifest
        for name, n in cache.stats.as_dict().items():
            tally[name] = tally.get(name, 0) + n
    return out


def run_selection(config: Any, step1: Any, rows: list[dict[str, Any]], layout: Any, log: Callable[[str], None]) -> dict:
    import ray

    from dnd.captioning.stage import stored_images
    from dnd.generation.stage import generated_dataset, run_generation
    from dnd.selection.dedupe import concept_key, unique_concepts

    started = time.time()
    active = [r for r in rows if r["status"] == "ok" and r["candidates"]]
    if not active:
        return {}
    # Candidates repeated within one neuron (same text up to case/space) are scored once.
    concepts, index = unique_concepts([[c["concept"] for c in r["candidates"]] for r in active])
    for row, positions in zip(active, index):
        kept, seen = [], set()
        for candidate, u in zip(row["candidates"], positions):
            if u not in seen:
                seen.add(u)
                kept.append({**candidate, "_u": u})
        row["candidates"] = kept
    generated, counts = run_generation(config, concepts, layout, log)

    layer_index = {layer.name: i for i, layer in enumerate(step1.layers)}
    position = [{n: p for p, n in enumerate(layer.neurons)} for layer in step1.layers]
    values: list[dict[str, float]] = [dict() for _ in active]  # per neuron: generated image -> activation
    peaks: list[dict[str, float]] = [dict() for _ in active]  # per neuron: generated image -> map peak

    def measure(us: "range | set[int]") -> tuple[int, dict]:
        """The target model on every usable generated image of concepts ``us`` (cached per image, so
        a resumed run sends only unseen ones); each neuron keeps its own candidates' activations.
        Returns (images sent through the target, cache counts)."""
        owner = {image: u for u in us for image in generated.usable(u)}
        if not owner:
            return 0, {}
        from dnd.selection.generated_activations import generated_activations

        needs: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # u -> (row, layer, position)
        for r, row in enumerate(active):
            li = layer_index[row["layer"]]
            for candidate in row["candidates"]:
                if candidate["_u"] in us:
                    needs[candidate["_u"]].append((r, li, position[li][row["neuron"]]))

        def unseen(ids: set[str]):
            return generated_dataset(layout, generated, config.output.storage_options).map_batches(
                _keep, fn_kwargs={"wanted": sorted(ids)}, batch_format="numpy")

        per_image, target_counts = generated_activations(
            config, step1.layers, layout, unseen, {image: generated.entry_keys[image] for image in owner}, log)
        for image, measured in per_image.items():
            for r, li, p in needs.get(owner[image], ()):
                values[r][image] = float(measured.summaries[li][p])
                peaks[r][image] = float(measured.peaks[li][p])
        return target_counts["target_forward_images"], target_counts["cache"]

    # ---- the target model on every usable generated image, once --------------------------------
    forward, cache_counts = measure(range(len(concepts)))
    counts["generation"]["target_forward_images"] = forward
    if cache_counts:
        counts["generation"]["target_cache"] = cache_counts

    # ---- CLIP embeddings: neurons' top images, generated images, candidate texts -------------
    stage = config.selection.embedder
    image_emb: dict[str, np.ndarray] = {}
    text_emb: dict[str, np.ndarray] = {}
    embed_tally = counts.setdefault("embeddings", {"cache": {}})["cache"] if stage is not None else {}

    def embed_texts(texts: set[str]) -> None:
        model_key = embedder_key(stage)
        text_emb.update(_embed(
            config, layout, lambda items: ray.data.from_items([{"text": t} for t in sorted(items)]),
            {t: content_key(model_key, "text", t) for t in texts}, log, "candidate concepts", embed_tally,
        ))

    if stage is not None:
        model_key = embedder_key(stage)
        top_ids = {t["image_id"] for r in active for t in r["top_images"]}
        gen_ids = {image for u in range(len(concepts)) for image in generated.usable(u)}

        def images_to_embed(ids: set[str]):
            # One pass (one actor pool) for the neurons' top images and the generated images.
            stored = stored_images(layout, ids & top_ids)
            made = generated_dataset(layout, generated, config.output.storage_options).map_batches(
                _keep, fn_kwargs={"wanted": sorted(ids & gen_ids)}, batch_format="numpy")
            return stored.union(made)

        image_emb = _embed(
            config, layout, images_to_embed,
            {i: content_key(model_key, "image", i) for i in top_ids | gen_ids}, log, "top and generated images", embed_tally,
        )
        embed_texts({c["concept"] for r in active for c in r["candidates"]})

    # ---- the paper's scores and choice per neuron ----------------------------------------------
    from dnd.selection.scoring import score_all, select_best

    chosen_index: list[int | None] = [None] * len(active)
    for r, row in enumerate(active):
        candidates = row["candidates"]
        image_ids, concept_of = [], []
        for j, candidate in enumerate(candidates):
            usable = [i for i in generated.usable(candidate["_u"]) if i in values[r]]
            image_ids.extend(usable)
            concept_of.extend([j] * len(usable))
        activations = np.array([values[r][i] for i in image_ids], dtype=np.float64)
        top_emb = gen_emb = None
        if stage is not None:
            tops = [image_emb[t["image_id"]] for t in row["top_images"] if t["image_id"] in image_emb]
            if tops and all(i in image_emb for i in image_ids):
                top_emb = np.stack(tops)
                gen_emb = np.stack([image_emb[i] for i in image_ids]) if image_ids else np.zeros((0, tops[0].shape[0]))
        scores = score_all(activations, np.asarray(concept_of, dtype=np.int64), len(candidates), top_emb, gen_emb,
                           beta=config.selection.beta, t=config.selection.top_t)
        chosen = scores[config.selection.scoring]
        for j, candidate in enumerate(candidates):
            candidate["scores"] = {name: _finite_or_none(scores[name][j]) for name in SCORE_NAMES}
            candidate["score"] = _finite_or_none(chosen[j])
        if np.isnan(chosen).all() or not np.isfinite(chosen).any():
            # No generated image for any candidate (all refused) or the function is unavailable:
            # fall back to the paper's Step-3-free label, the first summary's candidate.
            row["error"] = _join(row["error"], "warning: no generated image could score the candidates; label is the first summary")
            continue
        chosen_index[r] = select_best(chosen, [c["concept"] for c in candidates])

    # ---- parsimony: the label's own sub-phrases are generated and measured too -----------------
    parsimony = config.selection.parsimony_share
    if parsimony is not None:
        from dnd.selection.parsimony import sub_phrases

        known = {concept_key(c): u for u, c in enumerate(concepts)}
        first_new = len(concepts)
        attached: set[int] = set()  # concepts that became some neuron's sub-phrase candidates
        for r, row in enumerate(active):
            if chosen_index[r] is None:
                continue
            mine = {concept_key(c["concept"]) for c in row["candidates"]}
            for phrase in sub_phrases(row["candidates"][chosen_index[r]]["concept"]):
                key = concept_key(phrase)
                if key in mine:
                    continue
                if key not in known:
                    known[key] = len(concepts)
                    concepts.append(phrase)
                mine.add(key)
                attached.add(known[key])
                row["candidates"].append({"concept": phrase, "_u": known[key], "sub_phrase": True})
        new = concepts[first_new:]
        extra: dict[str, Any] = {"sub_phrases": len(attached), "new_concepts": len(new)}
        if new:
            more, more_counts = run_generation(config, new, layout, log)
            generated.concepts = list(concepts)  # the first round's list, now with the sub-phrases
            generated.images.extend(more.images)
            generated.entry_keys.update(more.entry_keys)
            extra["generation"] = more_counts["generation"]
        if attached:
            # A sub-phrase that was another neuron's candidate has images already; this neuron's
            # activations on them come from the per-image cache.
            forward, cache_counts = measure(attached)
            extra["target_forward_images"] = forward
            if cache_counts:
                extra["target_cache"] = cache_counts
            if stage is not None:
                embed_texts({concepts[u] for u in attached})
        counts["parsimony"] = extra

    # ---- label and multiple labels per neuron --------------------------------------------------
    from dnd.selection.multilabel import multiple_labels, text_similarity
    from dnd.selection.parsimony import simplest_sufficient, supported_labels

    for r, row in enumerate(active):
        candidates = row["candidates"]
        names = [c["concept"] for c in candidates]
        per_candidate = []  # per candidate: the neuron's map peak on each of its generated images
        for candidate in candidates:
            made = generated.images[candidate["_u"]]
            # Image i of every concept has the same seed: NaN keeps refused images' places so that
            # parsimony can pair image i of one concept with image i of another.
            acts = np.array([values[r].get(image, np.nan) if refused is None else np.nan for image, refused in made],
                            dtype=np.float64)
            candidate["images"] = int(np.isfinite(acts).sum())
            reasons = sorted({reason for _, reason in made if reason})
            candidate["refused"] = "; ".join(reasons) or None
            candidate["mean_activation"] = float(np.nanmean(acts)) if candidate["images"] else None
            candidate.setdefault("scores", {name: None for name in SCORE_NAMES})
            candidate.setdefault("score", None)
            candidate.setdefault("sub_phrase", False)
            per_candidate.append(np.array([peaks[r].get(image, np.nan) if refused is None else np.nan
                                           for image, refused in made], dtype=np.float64))
            candidate.pop("_u", None)
        best = chosen_index[r]
        if best is None:
            row["label"] = names[0]
            row["labels"] = [names[0]]
            continue
        # The neuron's floor on Step 3's images: its mean peak on the least related concept it was
        # shown (sub-phrases such as "circle" of "red circle" usually supply one).
        means = [float(np.nanmean(p)) for p in per_candidate if np.isfinite(p).any()]
        baseline = float(min(means)) if means else float("nan")
        if parsimony is not None:
            best, _share = simplest_sufficient(names, best, per_candidate, baseline, parsimony)
        row["label"] = names[best]
        # The label leads the multiple labels even when parsimony chose it over a higher score;
        # sub-phrases the paper's function did not score take part only through parsimony.
        ranked = np.array([np.inf if j == best else (c["score"] if c["score"] is not None else np.nan)
                           for j, c in enumerate(candidates)], dtype=np.float64)
        if text_emb and all(n in text_emb for n in names):
            similarity = text_similarity(np.stack([text_emb[n] for n in names]))
            labels = multiple_labels(names, ranked, similarity, config.selection.multilabel_similarity)
        else:
            labels = [names[best]]
        if config.selection.multilabel_share is not None:
            kept = supported_labels(names, [names.index(label) for label in labels], per_candidate, baseline,
                                    config.selection.multilabel_share)
            labels = [names[j] for j in kept]
        row["labels"] = labels
        # Candidates are reported label first, then best score first: the table reads as the ranking it is.
        order = sorted(range(len(candidates)), key=lambda j: (j != best, -(candidates[j]["score"] if candidates[j]["score"] is not None else -np.inf), j))
        row["candidates"] = [candidates[j] for j in order]
    counts["selection"] = {"neurons_scored": len(active), "seconds": round(time.time() - started, 3)}
    return counts


def label_without_selection(rows: list[dict[str, Any]]) -> None:
    """Step 3 switched off: the first summary's candidate is the label (paper 3.3)."""
    for row in rows:
        if row["status"] == "ok" and row["candidates"]:
            names = []
            for c in row["candidates"]:
                if c["concept"] not in names:
                    names.append(c["concept"])
            row["label"] = names[0]
            row["labels"] = names


def _keep(batch: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    mask = np.isin(batch["image_id"].astype(str), np.asarray(wanted, dtype=str))
    return {name: values[mask] for name, values in batch.items()}


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _join(existing: str, message: str) -> str:
    return f"{existing}; {message}" if existing else message
