"""Faithfulness benchmark: how far the NeuronEval scores of `dnd score` can be trusted, on the planted world.

For each probe seed, runs the demo under `method: paper` and `method: dnd` with kept activations,
then scores four explanations of every neuron of both layers against two kinds of concept vector:
- the neuron's true concept (the union of both for a polysemantic neuron): the upper bound;
- the `paper` run's label and the `dnd` run's label;
- the label of a random other neuron of the same layer (dnd run): the lower bound.
Concept vectors: `planted` (the world's truth) and `clip` (the world's embedder standing in for CLIP).
An explanation present in no probe image has undefined scores; they count as 0 in the means, and
how many there were is reported. Also: the Spearman rank agreement of `clip` with `planted` scores
over all (neuron, explanation) pairs, and the cost of the metrics alone on 1,000 neurons x 10,000
images with 6 explanations per neuron. Prints one JSON line.

    python benchmarks/faithfulness.py [--images 600] [--seeds 0 1 2] [--keep DIR]

Targets (medians over the seeds): truth > dnd >= paper > random on mean correlation and mean AUPRC
(planted vectors); Spearman(clip, planted) >= 0.6; scoring 1,000 x 10,000 in under 10 s.
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

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONDITIONS = ("truth", "dnd", "paper", "random")
HEADLINE = ("correlation", "auprc")


def explanations_of(runs: dict, seed: int) -> dict[str, dict[tuple[str, int], list[str]]]:
    """Per condition, per (layer, neuron), the texts whose union is the explanation."""
    from dnd.synthetic.truth import planted_truth

    truth = planted_truth()
    labels = {method: {(r.layer, int(r.neuron)): r.label for r in runs[method].neurons.itertuples()}
              for method in ("paper", "dnd")}
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {c: {} for c in CONDITIONS}
    for layer, entries in truth.items():
        neurons = sorted(entries)
        for n in neurons:
            key = (layer, n)
            out["truth"][key] = list(entries[n]["concepts"])
            for method in ("paper", "dnd"):
                out[method][key] = [labels[method][key]] if labels[method].get(key) else []
            other = int(rng.choice([m for m in neurons if m != n]))
            out["random"][key] = [labels["dnd"][(layer, other)]] if labels["dnd"].get((layer, other)) else []
    return out


def score_conditions(uri: str, concepts: str, explanations: dict) -> dict[str, dict[str, np.ndarray]]:
    """Per condition, per metric, the scores of every neuron (NaN where undefined)."""
    from dnd.faithfulness.metrics import METRICS, score_pairs
    from dnd.faithfulness.score import concept_vectors

    texts = sorted({t for per in explanations.values() for ts in per.values() for t in ts})
    kept, vectors = concept_vectors(uri, concepts, texts)
    row = {t: i for i, t in enumerate(texts)}
    matrices = {layer: kept.matrix(layer) for layer in kept.layers}  # read each layer's Parquet once
    out: dict[str, dict[str, list]] = {c: {m: [] for m in METRICS} for c in CONDITIONS}
    for condition, per in explanations.items():
        for (layer, neuron), ts in sorted(per.items()):
            if not ts:
                for m in METRICS:
                    out[condition][m].append(np.nan)
                continue
            # A union of texts (a polysemantic truth) is one concept: present where any is.
            present = np.any([vectors.present[row[t]] for t in ts], axis=0)
            soft = np.max([vectors.soft[row[t]] for t in ts], axis=0)
            activations = matrices[layer][[kept.layers[layer].index(neuron)]]
            scores = score_pairs(activations, soft[None], [0], [0], present=present[None])
            for m in METRICS:
                out[condition][m].append(float(scores[m][0]))
    return {c: {m: np.array(v) for m, v in ms.items()} for c, ms in out.items()}


def means(scores: dict) -> dict:
    return {c: {m: {"mean": round(float(np.nan_to_num(v, nan=0.0).mean()), 4), "undefined": int(np.isnan(v).sum())}
                for m, v in ms.items()} for c, ms in scores.items()}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho over the pairs both sources define: Pearson's r of the ranks, ties averaged."""
    import pandas as pd

    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return float("nan")
    rx, ry = pd.Series(x[keep]).rank().to_numpy(), pd.Series(y[keep]).rank().to_numpy()
    return round(float(np.corrcoef(rx, ry)[0, 1]), 4)


def metric_cost(neurons: int = 1000, images: int = 10_000, per_neuron: int = 6) -> float:
    from dnd.faithfulness.metrics import score_pairs

    rng = np.random.default_rng(0)
    activations = np.maximum(rng.normal(size=(neurons, images)), 0).astype(np.float32)
    concepts = (rng.random((neurons * per_neuron // 2, images)) < 0.1).astype(np.float32)
    neuron_of = np.repeat(np.arange(neurons), per_neuron)
    concept_of = rng.integers(0, concepts.shape[0], neurons * per_neuron)
    started = time.perf_counter()
    score_pairs(activations, concepts, neuron_of, concept_of)
    return round(time.perf_counter() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="probe images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--keep", metavar="DIR", help="keep the runs and their cache under DIR")
    args = parser.parse_args()

    import dnd
    from dnd.synthetic.demo import demo_config

    report: dict = {"benchmark": "faithfulness", "probe_images": args.images, "seeds": args.seeds, "per_seed": {}}
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()) as tmp:
        for seed in args.seeds:
            runs, score_seconds = {}, {}
            for method in ("paper", "dnd"):
                tag = f"{method}-seed{seed}"
                config = demo_config(os.path.join(tmp, tag), probe_images=args.images, seed=seed, method=method,
                                     faithfulness="planted")
                config["output"]["cache_uri"] = os.path.join(tmp, "cache")
                runs[method] = dnd.dissect(config, log=lambda m, tag=tag: print(f"[{tag}] {m}", file=sys.stderr))
                score_seconds[method] = runs[method].manifest["faithfulness"]["seconds"]
            explanations = explanations_of(runs, seed)
            uri = os.path.join(tmp, f"dnd-seed{seed}")
            planted = score_conditions(uri, "planted", explanations)
            clip = score_conditions(uri, "clip", explanations)
            agreement = {m: spearman(np.concatenate([clip[c][m] for c in CONDITIONS]),
                                     np.concatenate([planted[c][m] for c in CONDITIONS])) for m in planted["truth"]}
            report["per_seed"][str(seed)] = {"planted": means(planted), "clip": means(clip),
                                             "spearman_clip_vs_planted": agreement,
                                             "in_run_scoring_s": score_seconds}
    seeds = list(report["per_seed"].values())

    def median(path):
        values = []
        for s in seeds:
            node = s
            for key in path:
                node = node[key]
            values.append(node)
        values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
        return round(statistics.median(values), 4) if values else None

    report["median"] = {
        source: {c: {m: median([source, c, m, "mean"]) for m in HEADLINE} for c in CONDITIONS}
        for source in ("planted", "clip")
    }
    report["median"]["spearman_clip_vs_planted"] = {m: median(["spearman_clip_vs_planted", m]) for m in HEADLINE}
    report["cost_s_per_1000_neurons_x_10000_images"] = metric_cost()
    med = report["median"]["planted"]
    report["targets"] = {
        f"truth_gt_dnd_ge_paper_gt_random_{m}": bool(med["truth"][m] > med["dnd"][m] >= med["paper"][m] > med["random"][m])
        for m in HEADLINE
    }
    report["targets"]["spearman_at_least_0_6"] = all((report["median"]["spearman_clip_vs_planted"][m] or 0) >= 0.6
                                                     for m in HEADLINE)
    report["targets"]["cost_under_10_s"] = report["cost_s_per_1000_neurons_x_10000_images"] < 10
    print(json.dumps(report))


if __name__ == "__main__":
    main()
