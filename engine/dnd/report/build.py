"""`dnd report`: write a run's static HTML report (index.html, data/, thumbs/) beside it or to ``out``.

A folder written by `dnd compare` (it holds ``_COMPARE``) gets one report of all its methods'
runs instead, built by :mod:`dnd.report.compare` from the same pieces as a single run's.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

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


def _json(value: Any) -> str:
    # "</" is escaped so no label text can close the script element it is embedded in.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")


def _script(call: str, *values: Any) -> bytes:
    return f"{call}({','.join(_json(v) for v in values)});\n".encode()


def layer_entry(name: str, records: list[dict[str, Any]], faithfulness: dict[str, Any] | None) -> dict[str, Any]:
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


@dataclass
class RunRecords:
    """One finished run as the report sees it: its manifest and, per layer, its neurons' card records."""

    uri: str
    layout: RunLayout
    manifest: dict[str, Any]
    #: Layer names in the manifest's (the config's) order, then those of rows it doesn't name.
    layers: list[str]
    #: layer -> card records (data.neuron_record) in neuron order.
    records: dict[str, list[dict[str, Any]]]
    #: image_id -> kind, parent, box and size of Step 1's stored images (data.image_meta).
    meta: dict[str, dict[str, Any]]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config") or {}

    def all_records(self) -> list[dict[str, Any]]:
        return [r for name in self.layers for r in self.records[name]]


def read_run(uri: str, storage_options: dict | None = None, meta: dict[str, dict] | None = None) -> RunRecords:
    """The run at ``uri`` as card records; ``meta`` (image_meta) when the caller has read it already,
    as runs sharing one Step 1 can share it. Raises StorageError when the run has no neuron rows."""
    from dnd.results import Results

    layout = Results(uri, storage_options).layout
    manifest = layout.read_json("_SUCCESS") or {}
    from dnd.store.neurons import read_neurons

    table = read_neurons(layout)
    frame = None if table is None else table.to_pandas()
    if frame is None or len(frame) == 0:
        raise StorageError(f"run {uri!r} has no neuron rows to report")
    meta = image_meta(layout) if meta is None else meta
    concepts = {c["concept"] for cands in frame["candidates"] if cands is not None for c in cands}
    generated = generated_index(manifest.get("config") or {}, layout, concepts)

    layers = [entry.get("name") for entry in manifest.get("layers") or [] if isinstance(entry, dict)]
    layers += [name for name in dict.fromkeys(frame["layer"]) if name not in layers]
    layers = [name for name in layers if (frame["layer"] == name).any()]
    records = {name: [neuron_record(row, meta, generated) for row in frame[frame["layer"] == name]
                      .sort_values("neuron").itertuples()] for name in layers}
    return RunRecords(uri, layout, manifest, layers, records, meta)


def wanted_thumbnails(records: Iterable[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """The stored images (top images, crops and the crops' parents) and the generated images that
    ``records`` show, by id and cache key."""
    images: set[str] = set()
    generated: set[str] = set()
    for record in records:
        for image in record.get("tops", []) + record.get("crops", []):
            images.add(image["id"])
            if "p" in image:
                images.add(image["p"])
        for cand in record.get("cands", []):
            generated.update(cand["g"])
    return images, generated


def write_thumbnails(target: RunLayout, images_from: RunLayout, images: set[str],
                     generated: list[tuple[RunLayout, dict[str, Any], set[str]]]) -> dict[str, Any]:
    """Write the thumbnails not there yet: ``images`` from ``images_from``'s Step 1, and per run
    (layout, config, keys) its generated images from its generation cache. Returns the index's
    ``thumbs``, ``generated`` and ``thumbnails`` entries."""
    fs = target.fs
    thumbs = ThumbnailStore(fs, target.path("thumbs"))
    missing = {i for i in images if not thumbs.has(i)}
    thumbs.reused += len(images) - len(missing)
    for image_id, data in image_bytes(images_from, missing):
        thumbs.add(image_id, data)
    gen_thumbs = ThumbnailStore(fs, target.path("thumbs", "g"))
    every_key = set().union(*(keys for _, _, keys in generated))
    gen_thumbs.reused += sum(1 for key in every_key if gen_thumbs.has(key))
    for layout, config, keys in generated:
        # Runs of one comparison share a cache: what an earlier run's pass wrote is not read again.
        for key, data in generated_bytes(config, layout, {k for k in keys if not gen_thumbs.has(k)}):
            gen_thumbs.add(key, data)
    return {
        "thumbs": {i: 1 for i in sorted(images) if thumbs.has(i)},
        "generated": {i: 1 for i in sorted(every_key) if gen_thumbs.has(i)},
        "thumbnails": {"made": thumbs.made + gen_thumbs.made, "reused": thumbs.reused + gen_thumbs.reused},
    }


def write_layer(target: RunLayout, k: int, rows: list[dict[str, Any]]) -> None:
    with target.fs.open(target.path("data", f"layer-{k}.js"), "wb") as handle:
        handle.write(_script("DND_LAYER", k, rows))


def write_index(target: RunLayout, index: dict[str, Any], html: str) -> None:
    with target.fs.open(target.path("data", "index.js"), "wb") as handle:
        handle.write(b"window.DND_INDEX=" + _json(index).encode() + b";\n")
    with target.fs.open(target.path("index.html"), "wb") as handle:
        handle.write(html.encode())


def report_target(out: str, storage_options: dict | None) -> RunLayout:
    target = RunLayout(out, storage_options or {})
    target.fs.makedirs(target.path("data"), exist_ok=True)
    return target


def build_report(uri: str, out: str | None = None, storage_options: dict | None = None,
                 log: Callable[[str], None] | None = None) -> str:
    """Write the report of the run at ``uri`` to ``out`` (default ``<uri>/report``); return index.html's
    location. A `dnd compare` folder gets one report comparing its methods' runs."""
    log = log or (lambda message: None)
    out = out or join(uri, "report")
    compare = RunLayout(uri, storage_options or {}).read_json("_COMPARE")
    if compare is not None:
        from dnd.report.compare import build_comparison

        return build_comparison(uri, compare, out, storage_options, log)
    run = read_run(uri, storage_options)
    target = report_target(out, storage_options)
    # Whether any layer was scored decides, for the whole page, whether faithfulness is shown at all.
    faithfulness = run_faithfulness(run.all_records(), run.manifest)
    index_layers = []
    for k, name in enumerate(run.layers):
        index_layers.append(layer_entry(name, run.records[name], faithfulness))
        write_layer(target, k, run.records[name])
    images, generated = wanted_thumbnails(run.all_records())
    thumbnails = write_thumbnails(target, run.layout, images, [(run.layout, run.config, generated)])
    index = {"run": uri, "layers": index_layers, **thumbnails, "faithfulness": faithfulness}
    write_index(target, index, page(f"dnd report: {uri.rstrip('/').rsplit('/', 1)[-1]}", uri,
                                    method_line(run.manifest), faithfulness))
    log(f"report: {sum(map(len, run.records.values()))} neurons in {len(run.layers)} layers; "
        f"thumbnails made {thumbnails['thumbnails']['made']}, reused {thumbnails['thumbnails']['reused']}")
    return join(out, "index.html")


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
