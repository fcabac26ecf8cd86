"""How much work sharing saves: model calls per neuron, engine vs the paper's per-neuron procedure.

The per-neuron reference procedure captions each neuron's own K top images, simplifies its own K
captions and asks N summaries, generates N x Q images of its own and runs each of them through the
target model. The engine does each unique piece of work once. Both columns are for the same run:
the engine's from its _SUCCESS counts (fresh caches), the reference's from K, N, Q and the neurons.

    python benchmarks/sharing.py [--captioner synthetic|hf] [--neurons 64]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def config(out: str, neurons: int, captioner: str, images: int) -> dict:
    if captioner == "synthetic":
        caption = {"backend": "synthetic"}
    else:
        caption = {"backend": "hf", "options": {"model": "random-tiny", "max_new_tokens": 8}}
    return {
        "target": {"model": "torchvision:resnet18", "weights": "random-tiny", "batch_size": 64},
        "layers": ["layer1", "layer2", "layer3"],
        "neurons": f"0:{neurons}",
        "probe": {"sources": [{"uri": f"gen://shapes?n={images}&seed=0&size=64"}]},
        "step1": {"top_k": 10},
        "captioner": caption,
        "summarizer": {"backend": "extractive", "candidates": 5},
        "generator": {"backend": "diffusers", "options": {"model": "random-tiny"}, "images_per_concept": 10,
                      "batch_size": 16},
        "selection": {"embedder": {"backend": "clip", "options": {"model": "random-tiny"}}},
        "output": {"uri": out},
        "ray": {"num_cpus": os.cpu_count(), "object_store_memory": 400_000_000},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=64, help="neurons per layer (3 layers)")
    parser.add_argument("--images", type=int, default=500, help="probe images")
    parser.add_argument("--captioner", default="hf", choices=["hf", "synthetic"])
    args = parser.parse_args()

    import dnd

    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        results = dnd.dissect(config(os.path.join(tmp, "run"), args.neurons, args.captioner, args.images),
                              log=lambda m: print(f"[bench] {m}", file=sys.stderr))
        wall = time.time() - started
        manifest = results.manifest
        frame = results.neurons
    cfg = manifest["config"]
    k, n, q = cfg["step1"]["top_k"], cfg["summarizer"]["candidates"], cfg["generator"]["images_per_concept"]
    neurons = len(frame)
    top_images = int(sum(len(t) for t in frame["top_images"]))
    counts = manifest["counts"]
    engine = {
        "images_captioned": manifest["captions"]["captioned"],
        "llm_requests": manifest["concepts"]["unique_captions"] + manifest["concepts"]["unique_summaries"],
        "images_generated": manifest["generation"]["generated"],
        # Step 1 forward passes are the same procedure for both; only Step 3's differ.
        "target_forward_images": counts["target_forward_images"] + manifest["generation"]["target_forward_images"],
    }
    reference = {
        "images_captioned": top_images,
        "llm_requests": top_images + neurons * n,
        "images_generated": neurons * n * q,
        "target_forward_images": counts["target_forward_images"] + neurons * n * q,
    }
    per_neuron = {
        family: {
            "engine": round(engine[family] / neurons, 3),
            "per_neuron_procedure": round(reference[family] / neurons, 3),
            "ratio": round(engine[family] / reference[family], 4) if reference[family] else None,
        }
        for family in engine
    }
    print(json.dumps({
        "benchmark": "sharing",
        "neurons": neurons,
        "layers": cfg["layers"],
        "probe_images": counts["images_used"],
        "K": k, "N": n, "Q": q,
        "captioner": args.captioner,
        "calls_per_neuron": per_neuron,
        "target_met": all(v["ratio"] is not None and v["ratio"] <= 0.5 for v in per_neuron.values()),
        "wall_s": round(wall, 1),
    }))


if __name__ == "__main__":
    main()
