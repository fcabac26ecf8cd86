"""Resume benchmark: what a crash costs.

On a Ray head started here (127.0.0.1, its own temp dir and ports), the smoke config scaled up is run
three ways with `dnd dissect` as the driver: (1) undisturbed; (2) the same config at a new URI, its
driver killed (SIGKILL) at ~60% of (1)'s wall time, then (3) started again with the same command, which
resumes. Prints one JSON line: the wall times, and the model calls repeated after resume — entries the
killed attempt had persisted (Step 1's checkpoint, cached captions, LLM answers, generated images,
target activations, embeddings) that the resumed attempt computed again (target 0).

    RAY_AUTH_MODE=disabled python benchmarks/resume.py [--images 600] [--kill-at 0.6]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.cluster.conftest import RayHead, ray_env  # noqa: E402  (the same head the cluster tests use)

CACHES = {"captions": "captioner_images", "concepts": "summarizer_requests", "generated": "generator_images",
          "generated_activations": "target_generated_images", "embeddings": "embedder_inputs"}


def log(message: str) -> None:
    print(f"[resume-bench] {message}", file=sys.stderr, flush=True)


def command(out: str, images: int) -> list[str]:
    return ["dnd", "dissect", os.path.join(REPO, "examples", "smoke.yaml"), "--out", out,
            "--set", f"probe.sources=[{{uri: 'gen://shapes?n={images}&seed=0&size=64'}}]"]


def run(out: str, images: int, env: dict, kill_after: float | None = None) -> tuple[float, int | None]:
    started = time.time()
    with open(os.path.join(tempfile.gettempdir(), f"dnd-resume-bench-{os.getpid()}.log"), "ab") as sink:
        process = subprocess.Popen(command(out, images), env=env, stdout=sink, stderr=sink)
        try:
            code = process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
            process.wait()
            code = None
    return time.time() - started, code


def persisted(out: str) -> dict[str, int]:
    import pyarrow.parquet as pq

    counts = {}
    for name in CACHES:
        folder = os.path.join(out, "cache", name)
        keys: set[str] = set()
        if os.path.isdir(folder):
            for entry in os.listdir(folder):
                if entry.endswith(".parquet"):
                    keys.update(pq.read_table(os.path.join(folder, entry), columns=["key"]).column("key").to_pylist())
        counts[name] = len(keys)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="probe images (the smoke config has 200)")
    parser.add_argument("--kill-at", type=float, default=0.6, help="kill the second run at this fraction of the first's time")
    args = parser.parse_args()

    head = RayHead()
    work = tempfile.mkdtemp(prefix="dnd-resume-bench-")
    try:
        head.start()
        env = {**ray_env(), "RAY_ADDRESS": head.address}
        full_out, resumed_out = os.path.join(work, "full"), os.path.join(work, "resumed")
        log(f"full run of {args.images} probe images")
        full_s, code = run(full_out, args.images, env)
        if code != 0:
            raise SystemExit(f"the undisturbed run failed (exit {code})")
        full = json.load(open(os.path.join(full_out, "_SUCCESS")))
        log(f"full run {full_s:.1f}s; killing the next at {args.kill_at:.0%}")
        killed_s, code = run(resumed_out, args.images, env, kill_after=full_s * args.kill_at)
        if code is not None:
            raise SystemExit(f"the run to be killed finished first (exit {code}); use a smaller --kill-at")
        before = persisted(resumed_out)
        step1_saved = any(f.startswith("step1-") for f in os.listdir(os.path.join(resumed_out, "checkpoints"))) \
            if os.path.isdir(os.path.join(resumed_out, "checkpoints")) else False
        resumed_s, code = run(resumed_out, args.images, env)
        if code != 0:
            raise SystemExit(f"the resumed run failed (exit {code})")
        resumed = json.load(open(os.path.join(resumed_out, "_SUCCESS")))
        calls, full_calls = resumed["model_calls"], full["model_calls"]
        repeated = {family: max(0, before[name] + calls[family] - full_calls[family]) for name, family in CACHES.items()}
        repeated["target_probe_images"] = calls["target_probe_images"] if step1_saved else 0
        same = _neurons(full_out) == _neurons(resumed_out)
        print(json.dumps({
            "benchmark": "resume", "probe_images": args.images, "neurons": full["counts"]["neurons"],
            "full_run_s": round(full_s, 1), "killed_at_s": round(killed_s, 1), "resumed_part_s": round(resumed_s, 1),
            "killed_plus_resumed_s": round(killed_s + resumed_s, 1),
            "overhead_vs_full": round((killed_s + resumed_s) / full_s - 1, 3),
            "step1_checkpoint_before_kill": step1_saved, "persisted_before_resume": before,
            "model_calls_full": full_calls, "model_calls_resumed_part": calls,
            "repeated_model_calls": sum(repeated.values()), "repeated_by_family": repeated,
            "same_results": same,
        }))
    finally:
        head.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _neurons(out: str):
    import pyarrow.parquet as pq

    frame = pq.read_table(os.path.join(out, "neurons")).to_pandas().sort_values(["layer", "neuron"])
    return [(r.layer, int(r.neuron), r.label, r.status) for r in frame.itertuples()]


if __name__ == "__main__":
    main()
