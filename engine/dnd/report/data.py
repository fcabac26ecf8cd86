"""What the report shows, read from a run: neuron rows, stored images, generated images per candidate.

Everything is turned into plain JSON-able records here, so the page builder only lays them out.
"""

from __future__ import annotations

import math
from typing import Any

from dnd.store.layout import RunLayout

SCORE_NAMES = ("mean", "topk_squared", "image_products", "topk_squared_image_products")


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
    for row in read_columns(layout.fs, _parquet_parts(layout, "images"), columns):
        meta.setdefault(row["image_id"], row)
    return meta


def image_bytes(layout: RunLayout, wanted: set[str]) -> "Any":
    """(image_id, bytes) of the stored images in ``wanted``."""
    seen: set[str] = set()
    for row in read_columns(layout.fs, _parquet_parts(layout, "images"), ["image_id", "data"],
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
        candidates.append({
            "c": cand["concept"],
            "s": _number(cand.get("score")),
            "ss": [_number(scores.get(name)) for name in SCORE_NAMES],
            "ma": _number(cand.get("mean_activation")),
            "sp": bool(cand.get("sub_phrase")),
            "n": cand.get("images"),
            "r": cand.get("refused"),
            "g": generated.get(cand["concept"], []),
        })
    label = row.label if isinstance(row.label, str) else None
    return {
        "n": int(row.neuron),
        "label": label,
        "labels": [str(x) for x in (row.labels if row.labels is not None else [])],
        "status": row.status,
        "error": row.error if isinstance(row.error, str) else None,
        "tops": [image(t) for t in (row.top_images if row.top_images is not None else [])],
        "crops": [image({**c, "is_crop": True}) for c in (row.crops if row.crops is not None else [])],
        "cands": candidates,
    }
