"""Methods benchmark: paper, dnd, CLIP-Dissect and dnd with CLIP-Dissect's top concepts as extra
candidates (the hybrid), side by side on the planted world, through `dnd compare`.

For each probe seed, one comparison: one Step 1 (the demo's, method dnd's settings, every probe
image's activations kept) shared by the four methods; each method with its own cache, so its wall
seconds after Step 1 count every model call it needs. CLIP-Dissect chooses among the world's
vocabulary plus --distractors words, with the world's embedder standing in for CLIP. Reports per
method: recovery (a label naming the planted concept) per layer and per kind of neuron, mean
correlation and AUPRC of the labels against the `planted` concept vectors over every probe image
(an undefined score counts as 0), wall seconds per neuron after Step 1, and model calls per neuron.
Prints one JSON line.

    python benchmarks/methods.py [--images 600] [--seeds 0 1 2] [--distractors 1000] [--keep DIR]

Targets (medians over the seeds): dnd >= clip-dissect on recovery and on AUPRC while clip-dissect is
>= 20x cheaper per neuron; the hybrid >= both on recovery and AUPRC.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ("paper", "dnd", "clip-dissect", "hybrid")
HEADLINE = ("correlation", "auprc")


def method_figures(run) -> dict:
    """One method's figures from its finished run."""
    from dnd.methods.compare import seconds_after_step1
    from dnd.synthetic.recovery import recovery

    frame = run.neurons
    found = recovery(frame, with_similarity=False)
    hits = sum(found["accuracy"][layer] * found["neurons"][layer] for layer in found["accuracy"])
    scores = {m: np.array([np.nan if not isinstance(f, dict) or f.get(m) is None else f[m] for f in frame["faithfulness"]],
                          dtype=float) for m in HEADLINE}
    manifest = run.manifest
    neurons = len(frame)
    calls = manifest["model_calls"]
    return {
        "recovery": round(hits / sum(found["neurons"].values()), 4),
        "recovery_per_layer": found["accuracy"],
        "recovery_per_kind": found["accuracy_by_kind"],
        "polysemantic_both_named": found["polysemantic_both_named"],
        **{m: round(float(np.nan_to_num(v, nan=0.0).mean()), 4) for m, v in scores.items()},
        "undefined_scores": int(np.isnan(scores["auprc"]).sum()),
        "seconds_per_neuron": round(seconds_after_step1(manifest) / neurons, 4),
        "model_calls_per_neuron": {k: round(v / neurons, 3) for k, v in calls.items() if k != "target_probe_images"},
        "misses": [f"{m['layer']}/{m['neuron']}: {'|'.join(m['truth'])} -> {m['label']}" for m in found["misses"]],
    }


def median_of(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def medians(per_seed: list[dict]) -> dict:
    out = {}
    for method in METHODS:
        runs = [seed[method] for seed in per_seed]
        out[method] = {key: median_of([r[key] for r in runs])
                       for key in ("recovery", *HEADLINE, "seconds_per_neuron")}
        for group in ("recovery_per_layer", "recovery_per_kind"):
            out[method][group] = {name: median_of([r[group].get(name) for r in runs]) for name in runs[0][group]}
    return out


def targets(med: dict) -> dict:
    dnd, clip, hybrid = med["dnd"], med["clip-dissect"], med["hybrid"]
    cheaper = dnd["seconds_per_neuron"] / clip["seconds_per_neuron"] if clip["seconds_per_neuron"] else None
    return {
        "dnd_ge_clip_dissect_recovery": dnd["recovery"] >= clip["recovery"],
        "dnd_ge_clip_dissect_auprc": dnd["auprc"] >= clip["auprc"],
        "clip_dissect_cheaper_per_neuron_x": round(cheaper, 2) if cheaper else None,
        "clip_dissect_at_least_20x_cheaper": bool(cheaper and cheaper >= 20),
        "hybrid_ge_both_recovery": hybrid["recovery"] >= max(dnd["recovery"], clip["recovery"]),
        "hybrid_ge_both_auprc": hybrid["auprc"] >= max(dnd["auprc"], clip["auprc"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="probe images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--distractors", type=int, default=1000, help="distractor words in CLIP-Dissect's concept set")
    parser.add_argument("--hybrid-top", type=int, default=5, help="CLIP-Dissect concepts added to the hybrid's candidates")
    parser.add_argument("--keep", metavar="DIR", help="keep the comparisons under DIR")
    args = parser.parse_args()

    import dnd
    from dnd.synthetic.demo import demo_config

    report: dict = {"benchmark": "methods", "probe_images": args.images, "seeds": args.seeds,
                    "concept_set": f"planted:{args.distractors}", "hybrid": f"dnd + candidates.clip_dissect_top={args.hybrid_top}",
                    "step1": "shared, method dnd's settings", "per_seed": {}}
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()) as tmp:
        for seed in args.seeds:
            config = demo_config(os.path.join(tmp, "unused"), probe_images=args.images, seed=seed, method="dnd",
                                 faithfulness="planted")
            config["clip_dissect"] = {"concept_set": f"planted:{args.distractors}"}
            summary = dnd.compare(config, "paper,dnd,clip-dissect,hybrid=dnd", os.path.join(tmp, f"seed{seed}"),
                                  options=[f"hybrid:candidates.clip_dissect_top={args.hybrid_top}"], own_caches=True,
                                  log=lambda m, s=seed: print(f"[seed {s}] {m}", file=sys.stderr))
            report["per_seed"][str(seed)] = {name: method_figures(dnd.Results(uri)) for name, uri in summary["runs"].items()}
            report["per_seed"][str(seed)]["step1_seconds"] = summary["step1"].get("seconds")
    report["median"] = medians(list(report["per_seed"].values()))
    report["targets"] = targets(report["median"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
