"""What the report shows, read from a run: neuron rows, stored images, generated images per candidate.

Everything is turned into plain JSON-able records here, so the page builder only lays them out.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from dnd.faithfulness.metrics import METRICS as FAITHFULNESS_METRICS
from dnd.store.layout import RunLayout

SCORE_NAMES = ("mean", "topk_squared", "image_products", "topk_squared_image_products")

#: How each NeuronEval metric is named on the page: short, since a card shows all five on one line.
FAITHFULNESS_NAMES = {"correlation": "corr", "cosine": "cos", "auprc": "AUPRC", "f1": "F1", "iou": "IoU"}

#: The range each metric can take, so a layer's histograms share their axes with every other
#: layer's and can be compared by eye. Activations may be negative, so correlation and cosine
#: span [-1, 1]; AUPRC, F1 and IoU are fractions.
FAITHFULNESS_RANGES = {"correlation": (-1.0, 1.0), "cosine": (-1.0, 1.0), "auprc": (0.0, 1.0), "f1": (0.0, 1.0),
                       "iou": (0.0, 1.0)}

#: Bars per histogram: 0.05 wide on [0, 1], enough to see the shape of a layer of a few dozen neurons.
HISTOGRAM_BINS = 20


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else round(value, 5)


def _parquet_parts(layout: RunLayout, *parts: str) -> list[str]:
    path = layout.path(*parts)
    if not layout.fs.exists(path):
        return []
    if not layout.fs.isdir(path):
        return [path]
    return sorted(f for f in layout.fs.find(path) if f.endswith(".parquet"))


def read_columns(fs: Any, parts: list[str], columns: list[str], keep: Any = None):
    """Rows (as dicts) of Parquet ``parts``, only ``columns``, only rows where ``keep(row)``."""
    import pyarrow.parquet as pq

    for part in parts:
        with fs.open(part, "rb") as handle:
            table = pq.read_table(handle, columns=columns)
        for row in table.to_pylist():
            if keep is None or keep(row):
                yield row


def image_meta(layout: RunLayout) -> dict[str, dict[str, Any]]:
    """image_id -> kind, parent, box, size for every stored top image and crop (bytes not read)."""
    meta: dict[str, dict[str, Any]] = {}
    columns = ["image_id", "kind", "parent_id", "box", "width", "height"]
    for row in read_columns(layout.step1.fs, _parquet_parts(layout.step1, "images"), columns):
        meta.setdefault(row["image_id"], row)
    return meta


def image_bytes(layout: RunLayout, wanted: set[str]) -> "Any":
    """(image_id, bytes) of the stored images in ``wanted``."""
    seen: set[str] = set()
    for row in read_columns(layout.step1.fs, _parquet_parts(layout.step1, "images"), ["image_id", "data"],
                            keep=lambda r: r["image_id"] in wanted):
        if row["image_id"] not in seen:
            seen.add(row["image_id"])
            yield row["image_id"], row["data"]


def generated_index(config: dict, layout: RunLayout, concepts: set[str]) -> dict[str, list[str]]:
    """concept -> cache keys of its generated images (those the run generated, not refused).

    Step 3 seeds image i of every concept from (run seed, i) and prompts with the configured
    template, so (prompt, seed) finds a concept's images in the generation cache.
    """
    from dnd.generation.stage import image_seed

    generator = config.get("generator") or {}
    template = generator.get("prompt_template", "{}")
    count = int(generator.get("images_per_concept", 0) or 0)
    run_seed = int(config.get("seed", 0) or 0)
    wanted: dict[tuple[str, int], tuple[str, int]] = {}
    for concept in concepts:
        prompt = template.format(concept).casefold()
        for index in range(count):
            wanted[(prompt, image_seed(run_seed, index))] = (concept, index)
    cache_root = (config.get("output") or {}).get("cache_uri") or layout.cache
    cache = RunLayout(cache_root, layout.storage_options)
    found: dict[str, dict[int, str]] = {}
    parts = _parquet_parts(cache, "generated")
    for row in read_columns(cache.fs, parts, ["key", "prompt", "seed", "refused"]):
        hit = wanted.get((str(row["prompt"]).casefold(), int(row["seed"])))
        if hit and not row["refused"]:
            found.setdefault(hit[0], {}).setdefault(hit[1], row["key"])
    return {concept: [keys[i] for i in sorted(keys)] for concept, keys in found.items()}


def generated_bytes(config: dict, layout: RunLayout, keys: set[str]):
    """(cache key, bytes) of generated images."""
    cache_root = (config.get("output") or {}).get("cache_uri") or layout.cache
    cache = RunLayout(cache_root, layout.storage_options)
    seen: set[str] = set()
    for row in read_columns(cache.fs, _parquet_parts(cache, "generated"), ["key", "data"], keep=lambda r: r["key"] in keys):
        if row["key"] not in seen and row["data"]:
            seen.add(row["key"])
            yield row["key"], row["data"]


def box_percent(box: Any, parent: dict[str, Any] | None) -> list[float] | None:
    """A crop's box (x0, y0, x1, y1 in parent pixels) as percentages of the parent's size."""
    if box is None or parent is None or not parent.get("width") or not parent.get("height"):
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = float(parent["width"]), float(parent["height"])
    return [round(100 * x0 / w, 2), round(100 * y0 / h, 2), round(100 * (x1 - x0) / w, 2), round(100 * (y1 - y0) / h, 2)]


def neuron_record(row: Any, meta: dict[str, dict], generated: dict[str, list[str]]) -> dict[str, Any]:
    """One card's data. Image ids refer to thumbnails; ``g`` lists generated-image cache keys."""
    captions = {c["image_id"]: c["caption"] for c in (row.captions if row.captions is not None else [])}

    def image(entry: dict) -> dict[str, Any]:
        image_id = entry["image_id"]
        parent_id = entry.get("parent_id")
        is_crop = bool(entry.get("is_crop", parent_id is not None)) and bool(parent_id)
        record: dict[str, Any] = {"id": image_id, "a": _number(entry.get("activation"))}
        if image_id in captions:
            record["c"] = captions[image_id]
        if is_crop:
            record["p"] = parent_id
            record["b"] = box_percent(entry.get("box"), meta.get(parent_id))
        return record

    candidates = []
    for cand in row.candidates if row.candidates is not None else []:
        scores = cand.get("scores") or {}
        candidate = {
            "c": cand["concept"],
            "s": _number(cand.get("score")),
            "ss": [_number(scores.get(name)) for name in SCORE_NAMES],
            "ma": _number(cand.get("mean_activation")),
            "sp": bool(cand.get("sub_phrase")),
            "n": cand.get("images"),
            "r": cand.get("refused"),
            "g": generated.get(cand["concept"], []),
        }
        faithfulness = faithfulness_values(cand.get("faithfulness"))
        if faithfulness is not None:
            candidate["f"] = faithfulness
        candidates.append(candidate)
    label = row.label if isinstance(row.label, str) else None
    record = {
        "n": int(row.neuron),
        "label": label,
        "labels": [str(x) for x in (row.labels if row.labels is not None else [])],
        "status": row.status,
        "error": row.error if isinstance(row.error, str) else None,
        "tops": [image(t) for t in (row.top_images if row.top_images is not None else [])],
        "crops": [image({**c, "is_crop": True}) for c in (row.crops if row.crops is not None else [])],
        "cands": candidates,
    }
    # Runs made before `dnd score` existed have no faithfulness column at all; unscored rows hold null.
    scored = getattr(row, "faithfulness", None)
    faithfulness = faithfulness_values(scored)
    if faithfulness is not None:
        record["f"] = faithfulness
        record["fs"] = scored.get("concepts")
    return record


def faithfulness_values(scores: Any) -> list[float | None] | None:
    """A faithfulness struct as its metrics in FAITHFULNESS_METRICS order (null where undefined or
    not computed), like ``ss`` holds the Step 3 scores; None when the struct is null (not scored)."""
    if not isinstance(scores, dict):
        return None
    return [_number(scores.get(name)) for name in FAITHFULNESS_METRICS]


def histogram(values: list[float], low: float, high: float, bins: int = HISTOGRAM_BINS) -> list[int]:
    """Counts of ``values`` in ``bins`` equal bins over [low, high]; the top edge falls in the last
    bin, and a value outside the range (rounding) in the nearest one."""
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, max(0, int(math.floor((value - low) / (high - low) * bins))))] += 1
    return counts


def computed_metrics(records: list[dict[str, Any]], summary: dict[str, Any] | None) -> list[str]:
    """The metrics ``dnd score`` computed: those its _SUCCESS summary lists, else those any label
    or candidate of the run has a value for; in FAITHFULNESS_METRICS order."""
    listed = (summary or {}).get("metrics")
    if isinstance(listed, list) and listed:
        return [name for name in FAITHFULNESS_METRICS if name in listed]
    defined = set()
    for record in records:
        for scores in [record.get("f")] + [cand.get("f") for cand in record["cands"]]:
            for name, value in zip(FAITHFULNESS_METRICS, scores or []):
                if value is not None:
                    defined.add(name)
    return [name for name in FAITHFULNESS_METRICS if name in defined]


def layer_faithfulness(records: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any] | None:
    """A layer's distribution of its labels' scores, per metric: a histogram over the metric's
    range, with how many labels have a defined value and their median; None when no label of the
    layer was scored."""
    scored = [record["f"] for record in records if record.get("f") is not None]
    if not scored:
        return None
    out: dict[str, Any] = {"scored": len(scored), "metrics": {}}
    for name in metrics:
        position = FAITHFULNESS_METRICS.index(name)
        values = [scores[position] for scores in scored if scores[position] is not None]
        low, high = FAITHFULNESS_RANGES[name]
        out["metrics"][name] = {"low": low, "high": high, "counts": histogram(values, low, high),
                                "defined": len(values), "median": _number(statistics.median(values)) if values else None}
    return out


def run_faithfulness(records: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any] | None:
    """What the page needs to show a scored run's faithfulness at all: the order of the values in
    every ``f``, which metrics were computed and their names, and the concept source and α from the
    _SUCCESS summary; None when no label or candidate of the run was scored (nothing is shown)."""
    if not any(record.get("f") is not None or any("f" in cand for cand in record["cands"]) for record in records):
        return None
    summary = manifest.get("faithfulness") if isinstance(manifest.get("faithfulness"), dict) else {}
    metrics = computed_metrics(records, summary)
    if not metrics:  # scored, yet no metric has a value anywhere: there is nothing to sort by or plot
        return None
    sources = sorted({record["fs"] for record in records if record.get("fs")})
    return {
        "order": list(FAITHFULNESS_METRICS),
        "metrics": metrics,
        "names": dict(FAITHFULNESS_NAMES),
        "concepts": summary.get("concepts") or ", ".join(sources) or None,
        "alpha": _number(summary.get("alpha")),
    }
