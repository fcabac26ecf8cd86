"""``dnd score``: every label and candidate of a finished run against its concept vectors.

Reads the run's kept activations (Step 1, ``activations/``) and ``neurons/``, asks the concept source
for one vector per unique explanation, scores every (neuron, explanation) pair layer by layer with
:func:`dnd.faithfulness.metrics.score_pairs`, and writes a ``faithfulness`` struct into each row
(its label's scores) and into each candidate, one ``neurons/`` part at a time. The run's ``_SUCCESS``
gains a summary.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from dnd.errors import DndError
from dnd.faithfulness.metrics import score_pairs
from dnd.faithfulness.sources import ProbeImages, ScoringContext, build_source

if TYPE_CHECKING:
    from dnd.config import FaithfulnessConfig, RunConfig
    from dnd.store.layout import RunLayout


def _explanations(rows: Iterable[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        if row.get("label"):
            seen.setdefault(row["label"], None)
        for candidate in row.get("candidates") or []:
            seen.setdefault(candidate["concept"], None)
    return list(seen)


def _scores(values: dict[str, np.ndarray], p: int) -> dict[str, float | None]:
    return {name: (float(v[p]) if np.isfinite(v[p]) else None) for name, v in values.items()}


def _layer_summary(label_scores: list[dict[str, float | None]], metrics: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"neurons_scored": len(label_scores)}
    for name in metrics:
        values = np.array([s[name] for s in label_scores if s.get(name) is not None], dtype=np.float64)
        out[name] = ({"mean": round(float(values.mean()), 4), "median": round(float(np.median(values)), 4),
                      "defined": int(values.size)} if values.size else {"mean": None, "median": None, "defined": 0})
    return out


def score_run(layout: RunLayout, config: RunConfig, spec: FaithfulnessConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """Score ``layout``'s run with ``spec``; rewrite its ``neurons/`` part by part and return the summary
    for ``_SUCCESS``."""
    from dnd.store.activations import read_activations
    from dnd.store.neurons import iter_neurons, rewrite_neurons

    started = time.time()
    kept = read_activations(layout.step1)
    if kept is None:
        raise DndError(
            f"run {layout.uri!r} kept no activations, and faithfulness needs every probe image's: rerun it with "
            "step1.keep_activations: true (or a faithfulness section); Step 1 runs again, later steps come from the cache"
        )

    # Explanations first, from two columns of each part: the concept source answers for all at once.
    explanations = _explanations(row for part in iter_neurons(layout, ["label", "candidates"]) for row in part.to_pylist())
    images = ProbeImages(kept.image_ids, kept.refs, kept.sources)
    source = build_source(spec.concepts, spec.options)
    log(f"faithfulness: {len(explanations)} explanations x {len(images.image_ids)} probe images from concepts {spec.concepts!r}")
    vectors = source.vectors(explanations, images, ScoringContext(config, layout, log))
    expected = (len(explanations), len(images.image_ids))
    if vectors.soft.shape != expected or vectors.present.shape != expected:
        raise DndError(f"concept source {spec.concepts!r} returned vectors of shape {vectors.soft.shape}, expected {expected}")
    index = {text: t for t, text in enumerate(explanations)}
    metrics = list(spec.metrics)
    unscored: dict[str, int] = {}
    label_scores: dict[str, list[dict[str, float | None]]] = {}  # layer -> its labels' scores, over every part
    matrix: dict[str, np.ndarray] = {}  # the current layer's activations only: parts hold one layer each, in order

    def score_part(rows: list[dict[str, Any]]) -> None:
        """Score one part's rows in place; a pair's scores depend on its neuron and text only, so a
        layer scored part by part gets the figures it would get at once."""
        by_layer: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            row["faithfulness"] = None
            for candidate in row.get("candidates") or []:
                candidate["faithfulness"] = None
            by_layer.setdefault(row["layer"], []).append(row)
        for layer, layer_rows in by_layer.items():
            if layer not in kept.layers:
                reason = "layer without kept activations"
                unscored[reason] = unscored.get(reason, 0) + len(layer_rows)
                continue
            position = {neuron: j for j, neuron in enumerate(kept.layers[layer])}
            pairs: list[tuple[dict[str, Any], int | None, int, int]] = []  # (row, candidate index or None, neuron, text)
            for row in layer_rows:
                if not row.get("label"):
                    unscored["no label"] = unscored.get("no label", 0) + 1
                    continue
                if row["neuron"] not in position:
                    unscored["neuron without kept activations"] = unscored.get("neuron without kept activations", 0) + 1
                    continue
                j = position[row["neuron"]]
                pairs.append((row, None, j, index[row["label"]]))
                for c, candidate in enumerate(row.get("candidates") or []):
                    pairs.append((row, c, j, index[candidate["concept"]]))
            if not pairs:
                continue
            if layer not in matrix:
                matrix.clear()
                matrix[layer] = kept.matrix(layer)
            values = score_pairs(matrix[layer], vectors.soft, np.array([p[2] for p in pairs]),
                                 np.array([p[3] for p in pairs]), alpha=spec.alpha, metrics=tuple(metrics),
                                 present=vectors.present)
            for p, (row, c, _, _) in enumerate(pairs):
                scores = _scores(values, p)
                if c is None:
                    row["faithfulness"] = {"concepts": spec.concepts, **{name: scores.get(name) for name in metrics}}
                    label_scores.setdefault(layer, []).append(scores)
                else:
                    row["candidates"][c]["faithfulness"] = scores

    # Each part is read, scored and written back on its own, so no more than one part is in memory.
    rewrite_neurons(layout, score_part)
    per_layer = {layer: _layer_summary(scores, metrics) for layer, scores in label_scores.items()}
    absent = int((vectors.present.sum(axis=1) == 0).sum())
    summary = {
        "concepts": spec.concepts, "metrics": metrics, "alpha": spec.alpha,
        "probe_images": len(images.image_ids), "explanations": len(explanations),
        "explanations_present_nowhere": absent, "neurons_scored": sum(s["neurons_scored"] for s in per_layer.values()),
        "unscored": unscored, "source": vectors.notes, "per_layer": per_layer, "seconds": round(time.time() - started, 3),
    }
    log(f"faithfulness: {summary['neurons_scored']} neurons scored in {summary['seconds']:.1f}s "
        f"({absent} explanations present in no probe image)")
    return summary


def open_run(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[RunLayout, dict[str, Any], RunConfig]:
    """A finished run's layout (with its own cache location), ``_SUCCESS`` and config."""
    from dnd.config import RunConfig
    from dnd.store.layout import open_layout

    layout, manifest = open_layout(uri, storage_options)
    if manifest is None:
        raise DndError(f"{uri!r} holds no finished run (no _SUCCESS); score a run once dnd dissect has finished it")
    config = RunConfig.model_validate(manifest["config"])
    if storage_options:
        config.output.storage_options = storage_options
    return layout, manifest, config


def concept_vectors(uri: str, concepts: str, explanations: list[str], options: dict[str, Any] | None = None,
                    storage_options: dict[str, Any] | None = None, log: Callable[[str], None] | None = None):
    """A finished run's kept activations and the concept vectors of any ``explanations`` (not only
    its labels): ``(KeptActivations, ConceptVectors)``, for benchmarks and analyses that score
    their own explanations (a neuron's truth, another neuron's label) with ``score_pairs``."""
    from dnd.store.activations import read_activations

    layout, _, config = open_run(uri, storage_options)
    kept = read_activations(layout.step1)
    if kept is None:
        raise DndError(f"run {uri!r} kept no activations")
    images = ProbeImages(kept.image_ids, kept.refs, kept.sources)
    vectors = build_source(concepts, options).vectors(explanations, images,
                                                      ScoringContext(config, layout, log or (lambda m: None)))
    return kept, vectors


def score(uri: str, concepts: str, metrics: list[str] | None = None, alpha: float | None = None,
          options: dict[str, Any] | None = None, storage_options: dict[str, Any] | None = None,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score the finished run at ``uri`` (see :func:`score_run`); ``_SUCCESS`` gains the summary, which is returned."""
    import pydantic

    from dnd.config import FaithfulnessConfig
    from dnd.errors import ConfigError

    layout, manifest, config = open_run(uri, storage_options)
    fields: dict[str, Any] = {"concepts": concepts, "options": options or {}}
    if metrics:
        fields["metrics"] = metrics
    if alpha is not None:
        fields["alpha"] = alpha
    try:
        spec = FaithfulnessConfig.model_validate(fields)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors())
        raise ConfigError(f"dnd score: {problems}") from None
    summary = score_run(layout, config, spec, log or (lambda message: None))
    manifest["faithfulness"] = summary
    layout.write_json(manifest, "_SUCCESS")
    return summary
