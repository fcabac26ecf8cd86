"""The report of a `dnd compare` folder: one page over every method's run of one shared Step 1.

``<uri>/_COMPARE`` names the methods in order and, under ``runs``, each one's run (absolute, or
relative to the folder); ``summary`` (per method: neurons, ok, seconds_per_neuron, per_layer
metrics) and ``concepts`` are shown as they are and may be null. Each run is an ordinary finished
run, read as `dnd report` reads one.

The methods share Step 1, so a neuron's top images and crops are the same in every run: a card
row holds them once (from the first method whose run has the neuron) and, under ``m``, each
method's own part of its card record: status, label, multiple labels, candidates with their scores
and generated images, faithfulness, and the captions its Step 2A wrote of the shared images. A
method whose run lacks the neuron gets a part whose status is "no row".
"""

from __future__ import annotations

from typing import Any, Callable

from dnd.errors import StorageError
from dnd.report.build import (
    RunRecords, layer_entry, method_line, read_run, report_target, wanted_thumbnails, write_index, write_layer,
    write_thumbnails,
)
from dnd.report.data import run_faithfulness
from dnd.report.page import page
from dnd.store.fs import join

#: The status of a method's part for a neuron its run has no row of (a failed or partial run).
NO_ROW = "no row"

#: What a card record holds that every method's run shares: the neuron and Step 1's images.
SHARED = ("n", "tops", "crops")


def method_part(record: dict[str, Any]) -> dict[str, Any]:
    """A method's own part of a neuron's card record: all but the shared images, with the captions
    it wrote of them (if its method captions at all) as ``caps``, image id -> caption."""
    part = {key: value for key, value in record.items() if key not in SHARED}
    captions = {image["id"]: image["c"] for image in record["tops"] + record["crops"] if "c" in image}
    if captions:
        part["caps"] = captions
    return part


def no_row() -> dict[str, Any]:
    """The part of a method whose run has no row for the neuron: shown, never a crash."""
    return {"label": None, "labels": [], "status": NO_ROW, "error": None, "cands": []}


def shared_images(record: dict[str, Any]) -> dict[str, Any]:
    """The neuron and its top images and crops without captions, which belong to a method."""
    def bare(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{key: value for key, value in image.items() if key != "c"} for image in images]

    return {"n": record["n"], "tops": bare(record["tops"]), "crops": bare(record["crops"])}


def compare_rows(methods: list[str], runs: dict[str, RunRecords | None], layer: str) -> list[dict[str, Any]]:
    """A layer's card rows: one per neuron any run has, in neuron order, every method's part under ``m``."""
    by_method = {m: {r["n"]: r for r in run.records.get(layer, [])} for m, run in runs.items() if run is not None}
    neurons = sorted(set().union(*(records.keys() for records in by_method.values())))
    rows = []
    for n in neurons:
        present = [by_method[m][n] for m in methods if n in by_method.get(m, {})]
        row = shared_images(present[0])
        row["m"] = {m: method_part(by_method[m][n]) if n in by_method.get(m, {}) else no_row() for m in methods}
        rows.append(row)
    return rows


def read_runs(uri: str, compare: dict[str, Any], methods: list[str],
              storage_options: dict | None) -> tuple[dict[str, RunRecords | None], dict[str, str]]:
    """Each method's run (None where it can't be read or has no rows) and, for those, why."""
    paths = compare.get("runs") or {}
    runs: dict[str, RunRecords | None] = {}
    notes: dict[str, str] = {}
    meta = None  # one Step 1: its images' metadata is read once, with the first run
    for method in methods:
        path = paths.get(method)
        runs[method] = None
        if not path:
            notes[method] = "_COMPARE names no run for this method"
            continue
        # A relative path is taken as inside the compare folder, so the folder can be moved whole.
        location = path if "://" in path or path.startswith("/") else join(uri, path)
        try:
            runs[method] = read_run(location, storage_options, meta)
        except StorageError as error:
            notes[method] = str(error)
            continue
        meta = runs[method].meta
    return runs, notes


def comparison_faithfulness(runs: list[RunRecords], parts: list[dict[str, Any]],
                            concepts: str | None) -> dict[str, Any] | None:
    """The page's faithfulness entry over every method's parts: metrics any run's `dnd score`
    computed, the concept source _COMPARE names (else the first scored run's) and α."""
    summaries = [run.manifest["faithfulness"] for run in runs if isinstance(run.manifest.get("faithfulness"), dict)]
    summary = dict(summaries[0]) if summaries else {}
    listed = {name for s in summaries if isinstance(s.get("metrics"), list) for name in s["metrics"]}
    if listed:
        summary["metrics"] = sorted(listed)  # run_faithfulness puts them in the metrics' own order
    if concepts:
        summary["concepts"] = concepts
    return run_faithfulness(parts, {"faithfulness": summary})


def comparison_index(compare: dict[str, Any], methods: list[str], runs: dict[str, RunRecords | None],
                     notes: dict[str, str]) -> dict[str, Any]:
    """What the page's header shows per method: its run, its method line, _COMPARE's summary, and
    why its run could not be read."""
    summary = compare.get("summary") or {}
    return {
        "methods": methods,
        "runs": {m: run.uri if run is not None else (compare.get("runs") or {}).get(m) for m, run in runs.items()},
        "lines": {m: method_line(run.manifest) if run is not None else "" for m, run in runs.items()},
        "summary": {m: summary.get(m) if isinstance(summary.get(m), dict) else None for m in methods},
        "notes": notes,
    }


def build_comparison(uri: str, compare: dict[str, Any], out: str, storage_options: dict | None,
                     log: Callable[[str], None]) -> str:
    """Write the report of the `dnd compare` folder ``uri`` to ``out``; return index.html's location."""
    methods = [str(m) for m in compare.get("methods") or []]
    if not methods:
        raise StorageError(f"{join(uri, '_COMPARE')!r} lists no methods")
    runs, notes = read_runs(uri, compare, methods, storage_options)
    readable = [runs[m] for m in methods if runs[m] is not None]
    if not readable:
        raise StorageError(f"no run of the comparison at {uri!r} has neuron rows: {notes}")
    layers = list(dict.fromkeys(name for run in readable for name in run.layers))
    by_layer = [compare_rows(methods, runs, name) for name in layers]
    parts = [row["m"][m] for rows in by_layer for row in rows for m in methods]
    # As for one run, whether any method was scored decides whether the page shows faithfulness.
    faithfulness = comparison_faithfulness(readable, parts, compare.get("concepts"))
    target = report_target(out, storage_options)
    index_layers = []
    for k, (name, rows) in enumerate(zip(layers, by_layer)):
        # Every method's line of the index for this layer; the page shows the selected method's.
        entries = {m: layer_entry(name, [row["m"][m] for row in rows], faithfulness) for m in methods}
        index_layers.append({"name": name, "count": len(rows), "by": entries})
        write_layer(target, k, rows)
    images, _ = wanted_thumbnails(row for rows in by_layer for row in rows)
    generated = [(run.layout, run.config, wanted_thumbnails(run.all_records())[1]) for run in readable]
    thumbnails = write_thumbnails(target, readable[0].layout, images, generated)
    index = {"run": uri, "compare": comparison_index(compare, methods, runs, notes), "layers": index_layers,
             **thumbnails, "faithfulness": faithfulness}
    title = f"dnd compare: {uri.rstrip('/').rsplit('/', 1)[-1]}"
    write_index(target, index, page(title, uri, f"methods compared on one Step 1: {', '.join(methods)}",
                                    faithfulness, index["compare"]))
    log(f"report: {sum(map(len, by_layer))} neurons in {len(layers)} layers, {len(methods)} methods; "
        f"thumbnails made {thumbnails['thumbnails']['made']}, reused {thumbnails['thumbnails']['reused']}")
    return join(out, "index.html")
