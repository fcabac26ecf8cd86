"""Correctness benchmark: does the engine recover the planted concepts of the demo world?

Runs the `dnd demo` configuration under both methods, `paper` (section 3 and A.1 exactly) and `dnd`
(the paper plus dnd's additions), each with the paper's ablations (no attention crops, no Step 3,
each of the four scoring functions) and the other crop scope (a neuron's own crops, or the whole
layer's), on several seeds of the world's probe, sharing one model-output cache. Prints one JSON line: per method, variant and seed the recovery accuracy per layer and per
neuron kind, the multi-label coverage of polysemantic neurons and the mean sentence-embedding cosine
between labels and truth; the medians over the seeds; and the targets, read on the medians.

    python benchmarks/planted.py [--images 600] [--seeds 0 1 2] [--methods paper dnd] [--quick | --variants full ...]

Targets (medians over the seeds): dnd fc >= 95% and planted >= 85%; dnd >= paper on every kind of
neuron; crops raise small-object accuracy; Step 3 raises spurious-correlation accuracy; both
concepts of polysemantic neurons among dnd's labels in >= 70% of cases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Each variant: keyword arguments of ``demo_config``, or dotted options set on its result (``set``).
VARIANTS = {
    "full": {},
    "no_crops": {"crops": False},
    "no_step3": {"selection": False},
    "scoring_mean": {"scoring": "mean"},
    "scoring_topk_squared": {"scoring": "topk_squared"},
    "scoring_image_products": {"scoring": "image_products"},
    # Whose crops compete for a neuron's top-K: its own (the authors' procedure) or the layer's.
    "crop_scope_neuron": {"set": {"step1.crop_scope": "neuron"}},
    "crop_scope_layer": {"set": {"step1.crop_scope": "layer"}},
}
QUICK = ("full", "no_crops", "no_step3")


def median_summary(summaries: list[dict]) -> dict:
    """Medians over seeds of every accuracy a summary reports (a kind missing on a seed is left out there)."""
    def med(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 4) if values else None

    layers = sorted({layer for s in summaries for layer in s["accuracy"]})
    kinds = sorted({kind for s in summaries for kind in s["accuracy_by_kind"]})
    return {
        "accuracy": {layer: med([s["accuracy"].get(layer) for s in summaries]) for layer in layers},
        "accuracy_by_kind": {kind: med([s["accuracy_by_kind"].get(kind) for s in summaries]) for kind in kinds},
        "polysemantic_both_named": med([s["polysemantic_both_named"] for s in summaries]),
        "sentence_cosine": med([s.get("sentence_cosine") for s in summaries]),
    }


def targets(medians: dict) -> dict:
    dnd, paper = medians.get("dnd", {}), medians.get("paper", {})
    out = {}
    if "full" in dnd:
        full = dnd["full"]
        out["dnd_fc_at_least_95"] = (full["accuracy"].get("fc") or 0) >= 0.95
        out["dnd_planted_at_least_85"] = (full["accuracy"].get("planted") or 0) >= 0.85
        out["dnd_polysemantic_both_named_at_least_70"] = (full["polysemantic_both_named"] or 0) >= 0.70
        if "no_crops" in dnd:
            out["crops_raise_small_objects"] = ((full["accuracy_by_kind"].get("small_object") or 0)
                                                > (dnd["no_crops"]["accuracy_by_kind"].get("small_object") or 0))
        if "no_step3" in dnd:
            out["step3_raises_spurious"] = ((full["accuracy_by_kind"].get("spurious") or 0)
                                            > (dnd["no_step3"]["accuracy_by_kind"].get("spurious") or 0))
    if "full" in dnd and "full" in paper:
        kinds = set(dnd["full"]["accuracy_by_kind"]) | set(paper["full"]["accuracy_by_kind"])
        out["dnd_at_least_paper_on_every_kind"] = all(
            (dnd["full"]["accuracy_by_kind"].get(k) or 0) >= (paper["full"]["accuracy_by_kind"].get(k) or 0) for k in kinds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="probe images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="probe and run seeds (the demo's is 0)")
    parser.add_argument("--methods", nargs="+", choices=["paper", "dnd"], default=["paper", "dnd"])
    parser.add_argument("--quick", action="store_true", help=f"only the variants {', '.join(QUICK)}")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="only these variants")
    parser.add_argument("--keep", metavar="DIR", help="write the runs and their cache under DIR and keep them "
                        "(default: a temporary folder, removed at the end)")
    args = parser.parse_args()

    import dnd
    from dnd.config import load_config
    from dnd.synthetic.demo import demo_config
    from dnd.synthetic.recovery import recovery

    chosen = args.variants or (QUICK if args.quick else VARIANTS)
    variants = {k: v for k, v in VARIANTS.items() if k in chosen}
    report: dict = {"benchmark": "planted", "probe_images": args.images, "seeds": args.seeds, "runs": {}, "median": {}}
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()) as tmp:
        for method in args.methods:
            for name, options in variants.items():
                options = dict(options)
                overrides = options.pop("set", {})
                defaults = load_config(demo_config(tmp, method=method))
                if overrides and all(getattr(getattr(defaults, k.split(".", 1)[0]), k.split(".", 1)[1]) == v
                                     for k, v in overrides.items()):
                    report["runs"].setdefault(method, {})[name] = "same as full"  # the method's own setting
                    continue
                per_seed = {}
                for seed in args.seeds:
                    tag = f"{method}-{name}-seed{seed}"
                    config = demo_config(os.path.join(tmp, tag), probe_images=args.images, seed=seed, method=method,
                                         **options)
                    for dotted, value in overrides.items():
                        section, key = dotted.split(".", 1)
                        config.setdefault(section, {})[key] = value
                    config["output"]["cache_uri"] = os.path.join(tmp, "cache")
                    started = time.time()
                    results = dnd.dissect(config, log=lambda m, tag=tag: print(f"[{tag}] {m}", file=sys.stderr))
                    summary = recovery(results.neurons)
                    summary["wall_s"] = round(time.time() - started, 1)
                    summary["misses"] = summary["misses"][:20]
                    per_seed[str(seed)] = summary
                report["runs"].setdefault(method, {})[name] = per_seed
                report["median"].setdefault(method, {})[name] = median_summary(list(per_seed.values()))
    report["targets"] = targets(report["median"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
