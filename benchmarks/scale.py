"""Scale benchmark: every MLP neuron of a ViT-B/16 (36,864) described on 2 CPUs, against a 1/10 slice.

`torchvision:vit_b_16` with `weights: none` (random, nothing downloaded); layers
`encoder.layers.encoder_layer_N.mlp.1` (the hidden activation after the GELU, 3,072 neurons each,
N = 0..11) whose token outputs give each neuron its 14x14 patch map; `--images` generated probe
images of the planted world; the demo world's captioner, renderer and embedder and the `extractive`
summarizer (method dnd). Two runs, each with its own cache and its own driver process: the full one
(every neuron of every layer) and a slice of the same per-layer structure (the first
`--slice-neurons` neurons of every layer, 307 = a tenth by default). Attention crops are off in both
(`step1.crops: false`): a neuron cuts up to 4 crops on each of its 10 top images, each another
forward pass of the ViT (~0.16 s on 2 CPUs), ~1M of them at full size.

Reports per run: neurons, ok neurons (target: all), wall seconds, Step 1 seconds, seconds per neuron
after Step 1 (`_SUCCESS` timings, as `dnd compare` counts them; target full <= 1.2 x slice), the
driver's peak memory (VmHWM of the driver process, and the peak of its anonymous memory sampled
every 0.2 s: VmHWM counts the Ray object-store pages the driver maps; target <= 4 GB) and the
`neurons/` parts written. On the full run: `dnd report` build seconds (target < 60) and headless
Chromium's seconds from opening it to the first cards drawn with their images (target < 2; see
report_scale.py), and `dnd show`'s wall seconds as a command. Prints one JSON line; logs go to stderr.

    RAY_AUTH_MODE=disabled python benchmarks/scale.py [--images 300] [--quick] [--keep DIR]

`--quick`: layers 0 and 11 only and 100 probe images, for a smoke check of the script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
LAYER_SIZE = 3072  # ViT-B/16's MLP hidden width
MEMORY_LIMIT_MB = 4096
PER_NEURON_LIMIT = 1.2


def log(message: str) -> None:
    print(f"[scale-bench] {message}", file=sys.stderr, flush=True)


def layer_names(quick: bool) -> list[str]:
    blocks = [0, 11] if quick else list(range(12))
    return [f"encoder.layers.encoder_layer_{n}.mlp.1" for n in blocks]


def run_config(out: str, layers: list[str], neurons: int, images: int) -> dict:
    from dnd.synthetic.demo import demo_config

    config = demo_config(out, probe_images=images, crops=False, faithfulness=None)
    config["target"] = {"model": "torchvision:vit_b_16", "weights": "none",
                        # 16 images keep the actor's recorded maps (12 layers x 197 tokens x 3,072) near 0.5 GB.
                        "batch_size": 16}
    config["layers"] = layers
    config["neurons"] = "all" if neurons >= LAYER_SIZE else f"0:{neurons}"
    config["ray"] = {"num_cpus": os.cpu_count(), "object_store_memory": 300_000_000}
    return config


# --- the child: one dissection, its driver's memory watched from inside ---------------------------

def _status() -> dict[str, int]:
    """This process's /proc/self/status memory lines in kB (VmRSS, VmHWM, RssAnon ...)."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name.startswith(("Vm", "Rss")):
                values[name] = int(rest.split()[0])
    return values


class MemoryWatch:
    """Samples the driver's anonymous memory every ``interval`` s on a thread, noting the stage
    (the last log line) at its peak; VmHWM, read at the end, is the kernel's own peak of the RSS."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_anon_kb = 0
        self.stage_at_peak = ""
        self.stage = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            anon = _status().get("RssAnon", 0)
            if anon > self.peak_anon_kb:
                self.peak_anon_kb, self.stage_at_peak = anon, self.stage

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def child(config_path: str, result_path: str) -> None:
    import dnd

    config = json.loads(Path(config_path).read_text())
    with MemoryWatch() as watch:
        def on_log(message: str) -> None:
            watch.stage = message[:120]
            print(f"[dnd] {message}", file=sys.stderr, flush=True)

        started = time.time()
        results = dnd.dissect(config, log=on_log)
        wall = time.time() - started
    status = _status()
    manifest = results.manifest
    Path(result_path).write_text(json.dumps({
        "wall_s": wall, "manifest": manifest,
        "driver_peak_rss_mb": round(status["VmHWM"] / 1024, 1),
        "driver_peak_anon_mb": round(watch.peak_anon_kb / 1024, 1),
        "driver_peak_anon_stage": watch.stage_at_peak,
    }, default=str))


# --- the parent ----------------------------------------------------------------------------------

def dissect_in_child(name: str, config: dict, folder: Path) -> dict:
    """Run ``config`` with a fresh driver process (its memory is its own) and return its figures."""
    from dnd.methods.compare import seconds_after_step1

    config_path, result_path = folder / f"{name}.json", folder / f"{name}.result.json"
    config_path.write_text(json.dumps(config))
    log(f"{name}: {sum(1 for _ in config['layers'])} layers, neurons {config['neurons']!r} -> {config['output']['uri']}")
    code = subprocess.call([sys.executable, os.path.abspath(__file__), "--child", str(config_path), str(result_path)])
    if code != 0:
        raise SystemExit(f"the {name} run failed (exit {code}); its log is above")
    result = json.loads(result_path.read_text())
    manifest = result["manifest"]
    counts = manifest["counts"]
    neurons = int(counts["neurons"])
    timings = manifest["timings_s"]
    after = seconds_after_step1(manifest)
    parts = sorted(p.name for p in (Path(config["output"]["uri"]) / "neurons").glob("*.parquet"))
    return {
        "neurons": neurons,
        "ok": int(counts["status"].get("ok", 0)),
        "status": counts["status"],
        "wall_s": round(result["wall_s"], 1),
        "step1_s": round(timings.get("step1_activations_s", 0) + timings.get("step1_crops_s", 0), 1),
        "after_step1_s": round(after, 1),
        "per_neuron_after_step1_s": round(after / neurons, 5),
        "timings_s": timings,
        "driver_peak_rss_mb": result["driver_peak_rss_mb"],
        "driver_peak_anon_mb": result["driver_peak_anon_mb"],
        "driver_peak_anon_stage": result["driver_peak_anon_stage"],
        "neurons_parts": len(parts),
        "unique_concepts": (manifest.get("generation") or {}).get("unique_concepts"),
        "model_calls": manifest["model_calls"],
    }


def show_seconds(run: str) -> float:
    """Wall seconds of ``dnd show RUN`` as a user runs it (a new process: imports included)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import sys; from dnd.cli import main; sys.exit(main())", "show", run],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dnd show failed: {done.stderr[-2000:]}")
    return round(seconds, 2)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="probe images (default 300; --quick 100)")
    parser.add_argument("--slice-neurons", type=int, default=307, help="neurons per layer in the slice (default a tenth)")
    parser.add_argument("--quick", action="store_true", help="layers 0 and 11 only, 100 probe images")
    parser.add_argument("--keep", metavar="DIR", help="keep the runs and the report under DIR")
    args = parser.parse_args()
    images = args.images or (100 if args.quick else 300)
    layers = layer_names(args.quick)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from report_scale import measure

    report: dict = {"benchmark": "scale", "quick": args.quick, "model": "torchvision:vit_b_16 (weights none)",
                    "layers": len(layers), "probe_images": images, "crops": False, "cpus": os.cpu_count()}
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dnd-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        load_before = os.getloadavg()[0]
        runs = {}
        # The slice first: the full run's share of a busy machine is what the ratio is about.
        for name, per_layer in (("slice", args.slice_neurons), ("full", LAYER_SIZE)):
            runs[name] = dissect_in_child(name, run_config(str(folder / name), layers, per_layer, images), folder)
            log(f"{name}: {json.dumps(runs[name])}")
        full, part = runs["full"], runs["slice"]
        report_figures = measure(str(folder / "full"), folder / "report")
        report_figures["show_s"] = show_seconds(str(folder / "full"))
        ratio = full["per_neuron_after_step1_s"] / part["per_neuron_after_step1_s"]
        report.update({
            "full": full, "slice": part,
            "per_neuron_ratio_full_to_slice": round(ratio, 3),
            "report": report_figures,
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "targets": {
                "all_neurons_ok": full["ok"] == full["neurons"] and part["ok"] == part["neurons"],
                "per_neuron_ratio_le_1_2": ratio <= PER_NEURON_LIMIT,
                "driver_peak_le_4gb": max(full["driver_peak_rss_mb"], part["driver_peak_rss_mb"]) <= MEMORY_LIMIT_MB,
                "report_build_lt_60s": report_figures["build_s"] < 60,
                "first_cards_lt_2s": report_figures.get("open_to_first_cards_s") is not None
                and report_figures["open_to_first_cards_s"] < 2,
            },
        })
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
