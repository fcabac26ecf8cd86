"""``dnd compare``: several describers of the same neurons, on one Step 1, judged by the same metrics.

Each method (``paper``, ``dnd``, ``clip-dissect``, or a named variant of one of them) is an ordinary
run under ``<out>/<name>``, so ``dnd show``, ``dnd report``, ``dnd score`` and ``dnd eval fc`` work on
it unchanged. They share:
- one Step 1 at ``<out>/step1`` (``output.step1_uri``): the target model reads the probing set once,
  for the first method; the others load its checkpoint, top images, crops and kept activations;
- one cache at ``<out>/cache``: a model output one method computed is not computed again for another
  (``own_caches`` gives each method its own, so its seconds per neuron count every call it needs);
- one faithfulness source, so every method's labels are scored against the same concept vectors.

Step 1 is the config's own (its method's Step 1 settings), with every probe image's activations kept
for CLIP-Dissect and scoring; each run's ``_SUCCESS`` lists where that differs from its method.
``<out>/_COMPARE`` holds the summary; ``<out>/table/<layer>.parquet`` a row per neuron with every
method's label, status and scores.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, get_args

from dnd.errors import ConfigError

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.results import Results

#: Where each method's run, the shared Step 1 and the shared cache go under the compare root.
STEP1_FOLDER = "step1"
CACHE_FOLDER = "cache"
TABLE_FOLDER = "table"
COMPARE_FILE = "_COMPARE"
#: Scores copied into the per-layer table (the rest stay in each run's neurons/).
TABLE_METRICS = ("correlation", "auprc")
#: Sections a variant may not set: they are what the methods share, or what names the run.
SHARED_SECTIONS = ("method", "step1", "output", "target", "layers", "neurons", "probe", "faithfulness", "ray")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Variant:
    """One describer to compare: ``name`` (its folder and column), the ``method`` it runs, and the
    options it sets on top of that method's defaults."""

    name: str
    method: str
    overrides: list[str] = field(default_factory=list)


def parse_variants(methods: str | list[str], options: list[str] | tuple[str, ...] = ()) -> list[Variant]:
    """``methods``: ``paper,dnd,clip-dissect`` or ``NAME=METHOD`` entries (``hybrid=dnd``);
    ``options``: ``NAME:KEY=VALUE`` settings of one variant (``hybrid:candidates.clip_dissect_top=5``)."""
    from dnd.config import Method

    known = get_args(Method)
    entries = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    if not entries:
        raise ConfigError(f"--methods names no method; expected a comma-separated list of {', '.join(known)}")
    variants: dict[str, Variant] = {}
    for entry in entries:
        name, _, method = entry.partition("=")
        name, method = name.strip(), (method or name).strip()
        if method not in known:
            raise ConfigError(f"method {method!r} (in --methods {entry!r}) is not one of {', '.join(known)}")
        if not _NAME.match(name):
            raise ConfigError(f"method name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        if name in variants:
            raise ConfigError(f"method {name!r} is listed twice in --methods; name a variant NAME=METHOD")
        variants[name] = Variant(name, method)
    for option in options:
        name, sep, setting = option.partition(":")
        if not sep or "=" not in setting:
            raise ConfigError(f"variant option {option!r} is not NAME:KEY=VALUE (e.g. hybrid:candidates.clip_dissect_top=5)")
        if name not in variants:
            raise ConfigError(f"variant option {option!r} names {name!r}, which is not in --methods ({', '.join(variants)})")
        section = setting.split("=", 1)[0].strip().split(".")[0]
        if section in SHARED_SECTIONS:
            raise ConfigError(f"variant option {option!r} sets {section}, which every compared method shares; "
                              "set it in the config or with --set")
        variants[name].overrides.append(setting)
    return list(variants.values())


def shared_step1(base: RunConfig, variants: list[Variant]) -> dict[str, Any]:
    """The Step 1 settings every method runs on: the config's own, with every probe image's
    activations kept, and attention crops cut whenever a method that captions them is compared."""
    step1 = base.step1.model_dump(mode="json")
    step1["keep_activations"] = True
    if base.method == "clip-dissect" and any(v.method != "clip-dissect" for v in variants):
        step1["crops"] = True  # clip-dissect's own default is no crops; the captioning methods need them
    return step1


def faithfulness_spec(base: RunConfig, concepts: str | None) -> dict[str, Any] | None:
    """The concept source every method is scored against: ``concepts`` if given (the config's other
    faithfulness settings kept), else the config's own, else the run's embedder (``clip``)."""
    spec = base.faithfulness.model_dump(mode="json") if base.faithfulness is not None else None
    if concepts:
        spec = {**(spec or {}), "concepts": concepts}
    elif spec is None and base.selection.embedder is not None:
        spec = {"concepts": "clip"}
    return spec


def absolute(uri: str) -> str:
    from dnd.store.fs import protocol_of

    # Runs record the shared Step 1's location in their _SUCCESS: it must not depend on the working directory.
    return os.path.abspath(uri) if protocol_of(uri) == "file" else uri.rstrip("/")


def variant_configs(base: RunConfig, variants: list[Variant], root: str, concepts: str | None,
                    own_caches: bool) -> dict[str, RunConfig]:
    """Each method's full run configuration under ``root``; every one shares Step 1 and faithfulness."""
    from dnd.config import load_config
    from dnd.store.fs import join

    step1 = shared_step1(base, variants)
    faithfulness = faithfulness_spec(base, concepts)
    configs = {}
    for variant in variants:
        # keep_activations is re-derived for the method (the shared value replaces it below anyway).
        config = load_config(base, [f"method={variant.method}", "step1.keep_activations=null", *variant.overrides])
        data = config.model_dump(mode="json")
        cache = join(root, f"{CACHE_FOLDER}-{variant.name}") if own_caches else (base.output.cache_uri or join(root, CACHE_FOLDER))
        data.update(step1=step1, faithfulness=faithfulness)
        data["output"].update(uri=join(root, variant.name), cache_uri=cache, step1_uri=join(root, STEP1_FOLDER))
        configs[variant.name] = load_config(data)
    return configs


def compare(config: Any, methods: str | list[str] = "paper,dnd,clip-dissect", out: str | None = None, *,
            concepts: str | None = None, options: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = (),
            own_caches: bool = False, overwrite: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every method of ``methods`` on ``config``'s network and probing set with one Step 1 and
    return the comparison (also written to ``<out>/_COMPARE``)."""
    from dnd.backends import load_backends
    from dnd.config import load_config
    from dnd.pipeline import _log_to_stderr, dissect
    from dnd.store.fs import join
    from dnd.store.layout import RunLayout

    log = log or _log_to_stderr
    load_backends()
    base = load_config(config, list(overrides))
    variants = parse_variants(methods, options)
    root = absolute(out or base.output.uri)
    configs = variant_configs(base, variants, root, concepts, own_caches)
    layout = RunLayout(root, base.output.storage_options, step1_uri=join(root, STEP1_FOLDER))
    layout.check_writable()
    if overwrite:
        _forget_other_step1(layout, configs[variants[0].name])
    results: dict[str, Results] = {}
    for i, variant in enumerate(variants):
        log(f"compare: method {variant.name} ({i + 1} of {len(variants)}) -> {configs[variant.name].output.uri}")
        results[variant.name] = dissect(configs[variant.name], log=lambda m, n=variant.name: log(f"[{n}] {m}"),
                                        overwrite=overwrite)
    summary = summarise(results, configs)
    write_tables(layout, results)
    layout.write_json(summary, COMPARE_FILE)
    log(f"compare: {len(variants)} methods on one Step 1; table at {layout.uri}/{TABLE_FOLDER}, summary in {COMPARE_FILE}")
    return summary


def _forget_other_step1(layout: Any, config: RunConfig) -> None:
    """--overwrite: a shared Step 1 of other settings at this root is removed, as a run's own is."""
    from dnd.activations.checkpoint import step1_digest
    from dnd.pipeline import recorded_step1

    recorded = recorded_step1(layout.step1)
    if recorded is not None and recorded != step1_digest(config):
        layout.remove(STEP1_FOLDER)


#: Timings of a run that are not its method's own work after Step 1.
_NOT_AFTER_STEP1 = ("step1_activations_s", "step1_crops_s", "faithfulness_s", "total_s")


def seconds_after_step1(manifest: dict[str, Any]) -> float:
    """Wall seconds a run spent in the stages after Step 1 (its method's own work), from ``_SUCCESS``."""
    timings = manifest.get("timings_s") or {}
    return float(sum(v for k, v in timings.items() if k not in _NOT_AFTER_STEP1))


def summarise(results: dict[str, Results], configs: dict[str, RunConfig]) -> dict[str, Any]:
    """``_COMPARE``: per method its run, cost after Step 1, model calls and mean faithfulness per layer."""
    methods: dict[str, Any] = {}
    step1_counts: dict[str, Any] = {}
    for name, run in results.items():
        manifest = run.manifest
        neurons = int(manifest["counts"]["neurons"])
        seconds = seconds_after_step1(manifest)
        faithfulness = manifest.get("faithfulness") or {}
        per_layer = {
            layer: {metric: (scores.get(metric) or {}).get("mean") for metric in TABLE_METRICS}
            for layer, scores in (faithfulness.get("per_layer") or {}).items()
        }
        methods[name] = {
            "method": configs[name].method, "run": run.uri, "neurons": neurons,
            "ok": int(manifest["counts"]["status"].get("ok", 0)),
            "seconds_after_step1": round(seconds, 3), "seconds_per_neuron": round(seconds / max(neurons, 1), 4),
            "step1_from_checkpoint": bool(manifest["run"].get("step1_from_checkpoint")),
            "model_calls": manifest.get("model_calls"), "differs": manifest["method"].get("differs"),
            "per_layer": per_layer,
        }
        if not step1_counts and not methods[name]["step1_from_checkpoint"]:
            step1_counts = {"computed_by": name, "target_forward_images": manifest["model_calls"]["target_probe_images"],
                            "seconds": round(sum(manifest["timings_s"].get(k, 0.0) for k in _NOT_AFTER_STEP1[:2]), 3)}
    first = next(iter(configs.values()))
    return {
        "methods": list(results), "runs": {name: run.uri for name, run in results.items()},
        "step1_uri": first.output.step1_uri, "cache_uri": first.output.cache_uri,
        "concepts": first.faithfulness.concepts if first.faithfulness is not None else None,
        "step1": step1_counts, "summary": methods,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def layer_tables(results: dict[str, Results]) -> dict[str, Any]:
    """Per layer, an Arrow table with a row per neuron: every method's status, label and scores."""
    import pyarrow as pa

    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for name, run in results.items():
        for row in run.neurons.itertuples():
            entry = rows.setdefault((row.layer, int(row.neuron)), {"layer": row.layer, "neuron": int(row.neuron)})
            scores = getattr(row, "faithfulness", None)
            entry[f"{name}.status"] = row.status
            entry[f"{name}.label"] = row.label if isinstance(row.label, str) else None
            for metric in TABLE_METRICS:
                value = scores.get(metric) if isinstance(scores, dict) else None
                entry[f"{name}.{metric}"] = float(value) if value is not None else None
    columns = ["layer", "neuron"] + [f"{n}.{c}" for n in results for c in ("status", "label", *TABLE_METRICS)]
    types = {c: pa.string() if c.endswith((".status", ".label")) or c == "layer" else pa.float64() for c in columns}
    types["neuron"] = pa.int64()
    schema = pa.schema([(c, types[c]) for c in columns])
    tables = {}
    for layer in dict.fromkeys(key[0] for key in rows):
        ordered = [rows[key] for key in sorted(k for k in rows if k[0] == layer)]
        # A neuron one method has no row for reads as null there: never dropped from the table.
        tables[layer] = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in ordered], schema=schema)
    return tables


def write_tables(layout: Any, results: dict[str, Results]) -> None:
    from dnd.store.activations import layer_folder

    layout.remove(TABLE_FOLDER)
    for layer, table in layer_tables(results).items():
        layout.write_table(table, TABLE_FOLDER, f"{layer_folder(layer)}.parquet")
