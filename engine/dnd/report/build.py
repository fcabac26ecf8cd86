"""`dnd report`: write a run's static HTML report (index.html, data/, thumbs/) beside it or to ``out``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable

from dnd.errors import StorageError
from dnd.report.data import (
    generated_bytes, generated_index, image_bytes, image_meta, layer_faithfulness, neuron_record, run_faithfulness,
)
from dnd.report.page import page
from dnd.report.thumbs import ThumbnailStore
from dnd.store.fs import join
from dnd.store.layout import RunLayout

#: Label chips shown per layer in the index (the most frequent labels, with their counts).
TOP_LABELS = 40


def _script(call: str, *values: Any) -> bytes:
    # "</" is escaped so no label text can close the script element it is embedded in.
    body = ",".join(json.dumps(v, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/") for v in values)
    return f"{call}({body});\n".encode()


def _layer_entry(name: str, records: list[dict[str, Any]], faithfulness: dict[str, Any] | None) -> dict[str, Any]:
    """A layer's line of the index: its size, statuses, most common labels and, for a scored run,
    the distribution of its labels' faithfulness."""
    counts = Counter(r["label"] for r in records if r["label"])
    entry = {
        "name": name,
        "count": len(records),
        "status": dict(Counter(r["status"] for r in records)),
        "labels": [[label, n] for label, n in counts.most_common(TOP_LABELS)],
    }
    if faithfulness is not None:
        entry["faithfulness"] = layer_faithfulness(records, faithfulness["metrics"])
    return entry


def build_report(uri: str, out: str | None = None, storage_options: dict | None = None,
                 log: Callable[[str], None] | None = None) -> str:
    """Write the report of the run at ``uri`` to ``out`` (default ``<uri>/report``); return index.html's location."""
    from dnd.results import Results

    log = log or (lambda message: None)
    results = Results(uri, storage_options)
    layout = results.layout
    manifest = layout.read_json("_SUCCESS") or {}
    config = manifest.get("config") or {}
    frame = results.neurons
    if frame is None or len(frame) == 0:
        raise StorageError(f"run {uri!r} has no neuron rows to report")
    target = RunLayout(out or join(uri, "report"), storage_options or {})
    fs = target.fs
    fs.makedirs(target.path("data"), exist_ok=True)

    meta = image_meta(layout)
    concepts = {c["concept"] for cands in frame["candidates"] if cands is not None for c in cands}
    generated = generated_index(config, layout, concepts)

    # The manifest lists layers in the config's order; rows of layers it doesn't name come after.
    layers = [entry.get("name") for entry in manifest.get("layers") or [] if isinstance(entry, dict)]
    layers += [name for name in dict.fromkeys(frame["layer"]) if name not in layers]
    layers = [name for name in layers if (frame["layer"] == name).any()]

    wanted_images: set[str] = set()
    wanted_generated: set[str] = set()
    index_layers = []
    by_layer = [[neuron_record(row, meta, generated) for row in frame[frame["layer"] == name].sort_values("neuron")
                 .itertuples()] for name in layers]
    # Whether any layer was scored decides, for the whole page, whether faithfulness is shown at all.
    faithfulness = run_faithfulness([r for records in by_layer for r in records], manifest)
    for k, (name, records) in enumerate(zip(layers, by_layer)):
        for record in records:
            for image in record["tops"] + record["crops"]:
                wanted_images.add(image["id"])
                if "p" in image:
                    wanted_images.add(image["p"])
            for cand in record["cands"]:
                wanted_generated.update(cand["g"])
        index_layers.append(_layer_entry(name, records, faithfulness))
        with fs.open(target.path("data", f"layer-{k}.js"), "wb") as handle:
            handle.write(_script("DND_LAYER", k, records))

    thumbs = ThumbnailStore(fs, target.path("thumbs"))
    missing = {i for i in wanted_images if not thumbs.has(i)}
    for image_id in wanted_images - missing:
        thumbs.reused += 1
    for image_id, data in image_bytes(layout, missing):
        thumbs.add(image_id, data)
    gen_thumbs = ThumbnailStore(fs, target.path("thumbs", "g"))
    gen_missing = {i for i in wanted_generated if not gen_thumbs.has(i)}
    gen_thumbs.reused += len(wanted_generated) - len(gen_missing)
    for key, data in generated_bytes(config, layout, gen_missing):
        gen_thumbs.add(key, data)

    index = {
        "run": uri,
        "layers": index_layers,
        "thumbs": {i: 1 for i in sorted(wanted_images) if thumbs.has(i)},
        "generated": {i: 1 for i in sorted(wanted_generated) if gen_thumbs.has(i)},
        "thumbnails": {"made": thumbs.made + gen_thumbs.made, "reused": thumbs.reused + gen_thumbs.reused},
        "faithfulness": faithfulness,
    }
    with fs.open(target.path("data", "index.js"), "wb") as handle:
        handle.write(b"window.DND_INDEX=" + json.dumps(index, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/").encode() + b";\n")
    with fs.open(target.path("index.html"), "wb") as handle:
        handle.write(page(f"dnd report: {uri.rstrip('/').rsplit('/', 1)[-1]}", uri, method_line(manifest),
                          faithfulness).encode())
    log(f"report: {len(frame)} neurons in {len(layers)} layers; thumbnails made {index['thumbnails']['made']}, "
        f"reused {index['thumbnails']['reused']}")
    return join(out or join(uri, "report"), "index.html")


def method_line(manifest: dict) -> str:
    """"method: paper" or "method: dnd; differs: selection.parsimony_share=null, seed=3", from _SUCCESS."""
    method = manifest.get("method")
    if not isinstance(method, dict) or "name" not in method:
        return "method: not recorded (a run made before dnd recorded its method)"
    differs = method.get("differs") or {}
    if not differs:
        return f"method: {method['name']} (its defaults)"
    options = ", ".join(f"{name}={json.dumps(value)}" for name, value in sorted(differs.items()))
    return f"method: {method['name']}; options that differ from its defaults: {options}"
