#!/usr/bin/env python
"""Step 1 activation pass (pass A) of the engine against a plain PyTorch loop, and the engine's peak
memory against the size of the probing set.

    RAY_AUTH_MODE=disabled python benchmarks/activations.py            # full version (~10 minutes on 2 CPUs)
    RAY_AUTH_MODE=disabled python benchmarks/activations.py --quick    # smaller version (~3 minutes)

Prints ONE JSON line on stdout; everything else (engine logs, progress) goes to stderr.

Speed. The same generated images (``gen://shapes?n=N&seed=0&size=S``) go through

* the engine: ``dnd.pipeline.dissect`` with ``step1.crops: false`` and ``captioner: null``; the rate is
  images / ``_SUCCESS.timings_s.step1_activations_s`` (read -> decode/preprocess -> target-model actor
  pool -> streaming top-K on the driver, actor start-up included);
* a plain loop: a torch ``DataLoader`` (render + decode + resize/centre-crop/normalise in its workers),
  the same model with forward hooks on the same layers, a running top-K per neuron, no Ray; timed from
  building the model to the last batch, so it too pays its start-up (worker processes, model).

Both run in a fresh child process of their own, one after the other, with the whole machine available,
under ``torch.inference_mode`` and the same random weights (the engine seeds random initialisation; the
plain loop builds the model under the same seed), so their top-K lists can be compared as a check.

Memory. The benchmark's own process samples, every 0.2 s, every process of the child's tree (the driver,
and the Ray head processes and workers it starts, which are all its descendants): the sum of RSS, the
largest single-process RSS and the driver's RSS each tick (peaks reported), and the sum of PSS about
once a second (PSS splits shared pages such as the object store and shared libraries between the
processes mapping them, so it does not count them twice as the RSS sum does). Memory is compared
between a small and a large probing set; at full size the large run would take far too long on 2 CPUs,
so it uses the same model class at toy size (``weights: random-tiny``) on small images, as the JSON says.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MB = 1024.0 * 1024.0


def log(message: str) -> None:
    print(f"[bench activations] {message}", file=sys.stderr, flush=True)


def probe_uri(n: int, size: int, seed: int = 0) -> str:
    return f"gen://shapes?n={n}&seed={seed}&size={size}"


def engine_config(args: argparse.Namespace, n: int, size: int, weights: str, out_dir: str) -> dict[str, Any]:
    target: dict[str, Any] = {"model": args.model, "weights": weights, "batch_size": args.batch_size,
                              "pool_size": args.engine_pool_size}
    if args.engine_threads:
        target["threads"] = args.engine_threads
    return {
        "target": target,
        "layers": args.layers,
        "neurons": "all",
        "probe": {"sources": [{"uri": probe_uri(n, size)}]},
        "step1": {"crops": False, "top_k": args.top_k, "keep_activations": args.keep_activations},
        "captioner": None,
        "output": {"uri": out_dir},
        "ray": {"num_cpus": os.cpu_count() or 1},
    }


# ------------------------------------------------------------------------------------------------
# child processes


def child_engine(spec: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    from dnd.config import load_config
    from dnd.pipeline import dissect, init_ray

    config = load_config(spec["config"])
    started = time.time()
    init_ray(config)
    ray_init_s = time.time() - started
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None or not getattr(node, "head", False):
        raise SystemExit("the engine run joined an existing Ray cluster; unset RAY_ADDRESS / stop `ray start` first")
    started = time.time()
    results = dissect(config)
    dissect_s = time.time() - started
    manifest = results.manifest
    top: dict[str, list[str]] = {}
    if spec.get("want_topk"):
        for row in results.neurons.itertuples():
            top[f"{row.layer}/{row.neuron}"] = [t["image_id"] for t in row.top_images]
    ray.shutdown()
    return {"timings_s": manifest["timings_s"], "counts": manifest["counts"], "ray_init_s": ray_init_s,
            "dissect_s": dissect_s, "topk": top, "versions": manifest.get("versions", {})}


def child_plain(spec: dict[str, Any]) -> dict[str, Any]:
    import io

    import torch
    import torchvision
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from dnd.probe.generated import render_shapes
    from dnd.probe.sources import image_id
    from dnd.tiny import tiny_weights_seeded

    n, size, seed, k = spec["n"], spec["size"], spec["seed"], spec["top_k"]
    layers = spec["layers"]
    torch.set_num_threads(spec["threads"])

    class Shapes(Dataset):
        def __init__(self) -> None:
            self.transform = transforms.Compose([
                transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ])

        def __len__(self) -> int:
            return n

        def __getitem__(self, index: int):
            image = Image.open(io.BytesIO(render_shapes(seed, index, size))).convert("RGB")
            return self.transform(image), index

    started = time.time()
    with tiny_weights_seeded():  # the engine's seeded random initialisation, so top-K lists are comparable
        model = torchvision.models.get_model(spec["model"].split(":", 1)[1], weights=None).eval()
    if spec.get("channels_last"):
        # The layout the engine's actors use for convolutional networks (--plain-channels-last).
        model = model.to(memory_format=torch.channels_last)
    captured: dict[str, torch.Tensor] = {}
    for name in layers:
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, output, name=name: captured.__setitem__(name, output)
        )
    values: dict[str, torch.Tensor] = {}
    indices: dict[str, torch.Tensor] = {}
    loader = DataLoader(Shapes(), batch_size=spec["batch_size"], shuffle=False, num_workers=spec["workers"])
    seen = 0
    with torch.inference_mode():
        for pixels, index in loader:
            model(pixels)
            for name in layers:
                output = captured[name]
                pooled = output.flatten(2).mean(dim=2) if output.dim() == 4 else output  # (B, C)
                candidates = pooled.T  # (C, B)
                keys = index.expand(candidates.shape[0], -1)
                if name in values:
                    candidates = torch.cat([values[name], candidates], dim=1)
                    keys = torch.cat([indices[name], keys], dim=1)
                best = candidates.topk(min(k, candidates.shape[1]), dim=1)
                values[name], indices[name] = best.values, keys.gather(1, best.indices)
            seen += len(index)
    seconds = time.time() - started
    top: dict[str, list[str]] = {}
    if spec.get("want_topk"):
        ids: dict[int, str] = {}
        for name in layers:
            for neuron, row in enumerate(indices[name].tolist()):
                for i in row:
                    if i not in ids:
                        ids[i] = image_id(render_shapes(seed, i, size))
                top[f"{name}/{neuron}"] = [ids[i] for i in row]
    return {"seconds": seconds, "images": seen, "topk": top}


# ------------------------------------------------------------------------------------------------
# memory sampling of a child process tree


class TreeSampler:
    """Samples the memory of a process and all its descendants until stopped."""

    def __init__(self, pid: int, interval: float = 0.2, pss_every: int = 5, trace: bool = False):
        self.pid = pid
        self.trace = trace
        self.interval = interval
        self.pss_every = pss_every
        self.peak_rss_sum = 0
        self.peak_pss_sum = 0
        self.peak_driver = 0
        self.peak_driver_anon = 0
        self.peak_process: dict[int, tuple[int, str]] = {}
        self.max_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "TreeSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        tick = 0
        while not self._stop.is_set():
            try:
                processes = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            rss_sum = pss_sum = 0
            pss_ok = tick % self.pss_every == 0
            for process in processes:
                try:
                    if pss_ok:
                        info = process.memory_full_info()
                        pss_sum += info.pss
                    else:
                        info = process.memory_info()
                    rss = info.rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                rss_sum += rss
                if process.pid == self.pid:
                    self.peak_driver = max(self.peak_driver, rss)
                    # Anonymous pages only: RSS less file-backed and shared-memory pages (the object
                    # store the driver maps and reads batches from counts in its RSS, not in this).
                    self.peak_driver_anon = max(self.peak_driver_anon, rss - info.shared)
                if rss > self.peak_process.get(process.pid, (0, ""))[0]:
                    try:
                        name = " ".join(process.cmdline()[:1])[:60] or process.name()
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        name = "?"
                    self.peak_process[process.pid] = (rss, name)
            self.peak_rss_sum = max(self.peak_rss_sum, rss_sum)
            if pss_ok:
                self.peak_pss_sum = max(self.peak_pss_sum, pss_sum)
                if self.trace:
                    log(f"memory trace t={tick * self.interval:.0f}s processes={len(processes)} rss_sum={rss_sum / MB:.0f}MB "
                        f"pss_sum={pss_sum / MB:.0f}MB driver_anon_peak={self.peak_driver_anon / MB:.0f}MB")
            self.max_processes = max(self.max_processes, len(processes))
            self.samples += 1
            tick += 1
            self._stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        biggest = max(self.peak_process.values(), default=(0, ""))
        return {
            "peak_rss_sum_mb": round(self.peak_rss_sum / MB, 1),
            "peak_pss_sum_mb": round(self.peak_pss_sum / MB, 1),
            "peak_driver_rss_mb": round(self.peak_driver / MB, 1),
            "peak_driver_anon_mb": round(self.peak_driver_anon / MB, 1),
            "max_process_peak_rss_mb": round(biggest[0] / MB, 1),
            "max_process": os.path.basename(biggest[1]),
            "processes_max": self.max_processes,
            "samples": self.samples,
        }


def run_child(kind: str, spec: dict[str, Any], sample: bool = False, env: dict | None = None,
              trace: bool = False) -> dict[str, Any]:
    """Run one measurement in a fresh process; its stdout and stderr both go to our stderr."""
    with tempfile.TemporaryDirectory(prefix="dnd-bench-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--child", kind, "--spec", json.dumps(spec),
                   "--result", result_path]
        load_before = os.getloadavg()[0]
        started = time.time()
        child = subprocess.Popen(command, stdout=sys.stderr, stderr=sys.stderr, env={**os.environ, **(env or {})})
        sampler = TreeSampler(child.pid, trace=trace).start() if sample else None
        code = child.wait()
        if sampler:
            sampler.stop()
        wall = time.time() - started
        if code != 0:
            raise SystemExit(f"{kind} child failed with exit code {code}")
        with open(result_path) as handle:
            result = json.load(handle)
    result["child_wall_s"] = round(wall, 1)
    result["load_avg_1m_before"] = round(load_before, 2)
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    if sampler:
        result["memory"] = sampler.summary()
    return result


def topk_agreement(engine: dict[str, list[str]], plain: dict[str, list[str]]) -> dict[str, Any]:
    """How far the engine's top-K lists match the plain loop's: set overlap and identical ordered lists."""
    common = sorted(set(engine) & set(plain))
    if not common:
        return {"neurons_compared": 0}
    overlap = [len(set(engine[n]) & set(plain[n])) / max(1, len(plain[n])) for n in common]
    identical = [engine[n] == plain[n] for n in common]
    return {"neurons_compared": len(common), "mean_set_overlap": round(sum(overlap) / len(common), 4),
            "identical_lists_fraction": round(sum(identical) / len(common), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller version: 400 images, memory 500 vs 5,000")
    parser.add_argument("--images", type=int, help="images for the speed comparison (default 2000; quick 400)")
    parser.add_argument("--size", type=int, default=224, help="side of the generated images for the speed comparison")
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--layers", nargs="+", default=["layer4", "fc"])
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=200, help="images per forward pass, both sides")
    parser.add_argument("--plain-workers", type=int, default=1,
                        help="DataLoader worker processes (default 1: decoding in one worker overlaps the forward pass)")
    parser.add_argument("--plain-threads", type=int, default=os.cpu_count() or 1, help="torch threads of the plain loop")
    parser.add_argument("--plain-channels-last", action="store_true",
                        help="give the plain loop the engine's channels-last weight layout (isolates that optimisation)")
    parser.add_argument("--engine-threads", type=int, default=0,
                        help="target.threads for the engine (0 = leave null: the node's CPUs / pool_size)")
    parser.add_argument("--engine-pool-size", type=int, default=1)
    parser.add_argument("--memory-images", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                        help="probing-set sizes for the memory comparison (default 2000 20000; quick 500 5000)")
    parser.add_argument("--memory-weights", default="random-tiny",
                        help="weights for the memory runs (random-tiny: same class at toy size, so 20,000 images fit the time)")
    parser.add_argument("--memory-size", type=int, default=64, help="side of the generated images for the memory runs")
    parser.add_argument("--repeat", type=int, default=1,
                        help="engine/plain pairs to run, alternating which goes first; rates are medians")
    parser.add_argument("--trace-memory", action="store_true", help="log the memory samples of the memory runs to stderr")
    parser.add_argument("--keep-activations", action="store_true",
                        help="the engine also keeps every neuron's activation on every image (activations/, for dnd score)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", choices=["engine", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.spec)
        result = child_engine(spec) if args.child == "engine" else child_plain(spec)
        with open(args.result, "w") as handle:
            json.dump(result, handle)
        return

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    images = args.images or (400 if args.quick else 2000)
    small, large = args.memory_images or ((500, 5000) if args.quick else (2000, 20000))
    cpus = os.cpu_count() or 1
    started = time.time()
    report: dict[str, Any] = {"benchmark": "activations", "quick": args.quick, "cpus": cpus,
                              "keep_activations": args.keep_activations}

    if not args.skip_speed:
        report.update({"images": images, "image_size": args.size, "model": args.model, "weights": "none",
                       "layers": args.layers, "top_k": args.top_k, "batch_size": args.batch_size})
        plain_spec = {"n": images, "size": args.size, "seed": 0, "model": args.model, "layers": args.layers,
                      "top_k": args.top_k, "batch_size": args.batch_size, "workers": args.plain_workers,
                      "threads": args.plain_threads, "want_topk": True,
                      "channels_last": args.plain_channels_last}
        pairs = []
        for attempt in range(args.repeat):
            # Alternate the order, so that a change in the machine's load does not always favour one side.
            order = ("engine", "plain") if attempt % 2 == 0 else ("plain", "engine")
            done: dict[str, dict[str, Any]] = {}
            for side in order:
                if side == "engine":
                    with tempfile.TemporaryDirectory(prefix="dnd-bench-run-") as out:
                        config = engine_config(args, images, args.size, "none", os.path.join(out, "run"))
                        log(f"engine: {images} images of {args.size}px through {args.model} (weights none), "
                            f"layers {args.layers}")
                        done["engine"] = run_child("engine", {"config": config, "want_topk": True}, sample=True)
                else:
                    log(f"plain loop: {args.plain_workers} DataLoader worker(s), {args.plain_threads} torch thread(s)")
                    done["plain"] = run_child("plain", plain_spec)
            engine, plain = done["engine"], done["plain"]
            engine_rate = engine["counts"]["images_used"] / engine["timings_s"]["step1_activations_s"]
            plain_rate = plain["images"] / plain["seconds"]
            log(f"engine {engine_rate:.2f} img/s, plain {plain_rate:.2f} img/s, ratio {engine_rate / plain_rate:.3f}")
            pairs.append({"engine": engine, "plain": plain, "engine_rate": engine_rate, "plain_rate": plain_rate})
        engine_rate = statistics.median(p["engine_rate"] for p in pairs)
        plain_rate = statistics.median(p["plain_rate"] for p in pairs)
        engine, plain = pairs[-1]["engine"], pairs[-1]["plain"]
        threads = args.engine_threads or max(1, cpus // args.engine_pool_size)
        report.update({
            "engine_images_per_s": round(engine_rate, 2),
            "plain_images_per_s": round(plain_rate, 2),
            "ratio": round(engine_rate / plain_rate, 3),
            "engine": {
                "images_used": engine["counts"]["images_used"],
                "step1_activations_s": [p["engine"]["timings_s"]["step1_activations_s"] for p in pairs],
                "dissect_total_s": [round(p["engine"]["dissect_s"], 1) for p in pairs],
                "ray_init_s": [round(p["engine"]["ray_init_s"], 1) for p in pairs],
                "target_batch_size": args.batch_size,
                "pool_size": args.engine_pool_size,
                "torch_threads_per_actor": threads,
                "threads_option": args.engine_threads or None,
                "peak_memory": engine.get("memory"),
                "load_avg_1m": [[p["engine"]["load_avg_1m_before"], p["engine"]["load_avg_1m_after"]] for p in pairs],
            },
            "plain": {
                "images": plain["images"],
                "seconds": [round(p["plain"]["seconds"], 2) for p in pairs],
                "dataloader_num_workers": args.plain_workers,
                "torch_threads": args.plain_threads,
                "channels_last": args.plain_channels_last,
                "batch_size": args.batch_size,
                "load_avg_1m": [[p["plain"]["load_avg_1m_before"], p["plain"]["load_avg_1m_after"]] for p in pairs],
            },
            "repeat": args.repeat,
            "ratios": [round(p["engine_rate"] / p["plain_rate"], 3) for p in pairs],
            "topk_agreement": topk_agreement(engine["topk"], plain["topk"]),
        })
        report["versions"] = {k: v for k, v in engine.get("versions", {}).items()
                              if k in ("python", "ray", "torch", "torchvision", "numpy")}

    if not args.skip_memory:
        memory: dict[str, Any] = {"model": args.model, "weights": args.memory_weights, "image_size": args.memory_size,
                                  "images_small": small, "images_large": large,
                                  "measure": ("peak over 0.2 s samples of the sum of RSS of the driver and all its "
                                              "descendant processes (Ray head + workers); driver anonymous memory = RSS "
                                              "less file-backed and shared pages (so without the object-store pages "
                                              "it maps); PSS sum sampled ~1 s"),
                                  "note": (f"weights {args.memory_weights} on {args.memory_size} px images: {large} "
                                           "images through the full-size model at 224 px would take far too long "
                                           "on 2 CPUs (~15 images/s)")}
        runs = {}
        for label, n in (("small", small), ("large", large)):
            with tempfile.TemporaryDirectory(prefix="dnd-bench-run-") as out:
                config = engine_config(args, n, args.memory_size, args.memory_weights, os.path.join(out, "run"))
                log(f"memory: engine on {n} images of {args.memory_size}px ({args.model}, {args.memory_weights})")
                runs[label] = run_child("engine", {"config": config}, sample=True, trace=args.trace_memory)
            stats = runs[label]["memory"]
            memory[f"peak_rss_mb_{label}"] = stats["peak_rss_sum_mb"]
            memory[f"peak_pss_mb_{label}"] = stats["peak_pss_sum_mb"]
            memory[f"driver_peak_rss_mb_{label}"] = stats["peak_driver_rss_mb"]
            memory[f"driver_peak_anon_mb_{label}"] = stats["peak_driver_anon_mb"]
            memory[f"max_process_peak_rss_mb_{label}"] = stats["max_process_peak_rss_mb"]
            memory[f"processes_{label}"] = stats["processes_max"]
            memory[f"step1_activations_s_{label}"] = runs[label]["timings_s"]["step1_activations_s"]
            kept = runs[label]["counts"].get("activations_kept")
            if kept:  # --keep-activations: what the kept activations weigh on storage (not in memory)
                memory[f"activations_kept_mb_{label}"] = round(kept["bytes"] / 1e6, 2)

        def growth(key: str) -> float:
            base = memory[f"{key}_small"]
            return round(memory[f"{key}_large"] / base - 1.0, 4) if base else float("nan")

        memory["growth"] = growth("peak_rss_mb")
        memory["growth_pss"] = growth("peak_pss_mb")
        memory["growth_driver"] = growth("driver_peak_rss_mb")
        memory["growth_driver_anon"] = growth("driver_peak_anon_mb")
        memory["growth_max_process"] = growth("max_process_peak_rss_mb")
        report["memory"] = memory
        log(f"memory: peak RSS sum {memory['peak_rss_mb_small']} MB ({small}) vs {memory['peak_rss_mb_large']} MB "
            f"({large}), growth {memory['growth']:+.1%}")

    report["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
