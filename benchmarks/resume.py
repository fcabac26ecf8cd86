"""Resume benchmark: what a crash costs.

On a Ray head started here (127.0.0.1, its own temp dir and ports), the smoke config scaled up is run
three ways with `dnd dissect` as the driver: (1) undisturbed; (2) the same config at a new URI, its
driver killed (SIGKILL) at ~60% of (1)'s wall time (or, with --kill-in-pass-a F, once Step 1 pass A's
progress save shows a fraction F of the probe images read), then (3) started again with the same
command, which resumes. Prints one JSON line: the wall times, and the model calls repeated after resume — entries the
killed attempt had persisted (Step 1's checkpoint, cached captions, LLM answers, generated images,
target activations, embeddings) that the resumed attempt computed again (target 0).

With --nodes 2 a worker node joins the head (its own raylet and CPUs, the `dnd_worker_node`
resource) and the target's pools run only there (`target.resources`). --kill node then loses that
node at the kill point instead of the driver (raylet and workers SIGKILLed by process group): the
driver fails on its own (one line, within `ray.stall_timeout_s`, --stall-timeout), a replacement node
joins (its start-up is reported apart, as `replacement_node_s`: infrastructure, not dnd's work), and
the same command resumes. The 1-minute load average is sampled every second of every run.

    RAY_AUTH_MODE=disabled python benchmarks/resume.py [--images 600] [--kill-at 0.6 | --kill-in-pass-a 0.5]
        [--nodes 1|2] [--kill driver|node] [--stall-timeout 60]
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
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.cluster.conftest import RayHead, RayWorkerNode, ray_env  # noqa: E402  (the cluster tests' own)

CACHES = {"captions": "captioner_images", "concepts": "summarizer_requests", "generated": "generator_images",
          "generated_activations": "target_generated_images", "embeddings": "embedder_inputs"}


def log(message: str) -> None:
    print(f"[resume-bench] {message}", file=sys.stderr, flush=True)


def command(out: str, images: int, extra: list[str]) -> list[str]:
    words = ["dnd", "dissect", os.path.join(REPO, "examples", "smoke.yaml"), "--out", out,
             "--set", f"probe.sources=[{{uri: 'gen://shapes?n={images}&seed=0&size=64'}}]",
             # Pass A saves its progress often enough that a kill inside it has something to resume from.
             "--set", f"output.checkpoint_images={max(50, images // 20)}"]
    for override in extra:
        words += ["--set", override]
    return words


LOAD: list[float] = []  # the 1-minute load average, sampled once a second while a run is going


def run(out: str, images: int, env: dict, extra: list[str], kill_after: float | None = None,
        kill_when: Callable[[], bool] | None = None, kill: Callable[[], None] | None = None) -> tuple[float, int | None]:
    """Run the driver; at the kill point SIGKILL it, or call ``kill`` (lose a node) and let it end
    by itself. Returns its seconds and exit code (None: killed)."""
    started = last_sample = time.time()
    with open(os.path.join(tempfile.gettempdir(), f"dnd-resume-bench-{os.getpid()}.log"), "ab") as sink:
        process = subprocess.Popen(command(out, images, extra), env=env, stdout=sink, stderr=sink)
        while process.poll() is None:
            if time.time() - last_sample >= 1:
                LOAD.append(os.getloadavg()[0])
                last_sample = time.time()
            if (kill_after is not None and time.time() - started >= kill_after) or (kill_when is not None and kill_when()):
                if kill is None:
                    process.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
                    process.wait()
                    return time.time() - started, None
                kill()
                kill_after = kill_when = None  # the driver is to notice the loss and end on its own
            time.sleep(0.1)
    return time.time() - started, process.returncode


def pass_a_read(out: str) -> int:
    """Probe images read as of pass A's last progress save under ``out`` (0 before the first)."""
    import numpy as np

    folder = os.path.join(out, "checkpoints")
    saves = [f for f in os.listdir(folder) if f.endswith("-pass-a.npz")] if os.path.isdir(folder) else []
    if not saves:
        return 0
    try:
        with np.load(os.path.join(folder, saves[0]), allow_pickle=False) as data:
            return int(json.loads(str(data["meta"]))["images_read"])
    except (OSError, ValueError, KeyError):  # replaced while read: the next poll sees the new one
        return 0


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
    parser.add_argument("--kill-in-pass-a", type=float, metavar="F",
                        help="instead, kill it once pass A's progress save shows this fraction of the probe images read")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1,
                        help="2: a worker node joins the head and runs the target's pools")
    parser.add_argument("--kill", choices=("driver", "node"), default="driver",
                        help="what is lost at the kill point (node: the worker node; needs --nodes 2)")
    parser.add_argument("--stall-timeout", type=float, default=60.0,
                        help="ray.stall_timeout_s with --nodes 2: how long a stage waits for the lost node's resource")
    args = parser.parse_args()
    if args.kill == "node" and args.nodes != 2:
        parser.error("--kill node needs --nodes 2 (the head runs the driver)")

    head = RayHead()
    nodes: list[RayWorkerNode] = []
    work = tempfile.mkdtemp(prefix="dnd-resume-bench-")
    extra = [] if args.nodes == 1 else ["target.resources={dnd_worker_node: 0.1}",
                                        f"ray.stall_timeout_s={args.stall_timeout}"]
    try:
        head.start()
        if args.nodes == 2:
            nodes.append(RayWorkerNode(head).start())
        env = {**ray_env(), "RAY_ADDRESS": head.address}
        full_out, resumed_out = os.path.join(work, "full"), os.path.join(work, "resumed")
        log(f"full run of {args.images} probe images on {args.nodes} node(s)")
        full_s, code = run(full_out, args.images, env, extra)
        if code != 0:
            raise SystemExit(f"the undisturbed run failed (exit {code})")
        full = json.load(open(os.path.join(full_out, "_SUCCESS")))
        full_load, LOAD[:] = list(LOAD), []
        lose = (lambda: nodes[-1].kill()) if args.kill == "node" else None
        if args.kill_in_pass_a is not None:
            log(f"full run {full_s:.1f}s; losing the {args.kill} once pass A has saved {args.kill_in_pass_a:.0%} of the probe")
            killed_s, code = run(resumed_out, args.images, env, extra, kill=lose,
                                 kill_when=lambda: pass_a_read(resumed_out) >= args.kill_in_pass_a * args.images)
        else:
            log(f"full run {full_s:.1f}s; losing the {args.kill} at {args.kill_at:.0%}")
            killed_s, code = run(resumed_out, args.images, env, extra, kill=lose, kill_after=full_s * args.kill_at)
        if args.kill == "driver" and code is not None or args.kill == "node" and code in (0, None):
            raise SystemExit(f"the run to be killed finished first (exit {code}); use a smaller --kill-at")
        replacement_s = 0.0
        if args.kill == "node":
            started = time.time()
            nodes.append(RayWorkerNode(head).start())
            replacement_s = time.time() - started
        killed_load, LOAD[:] = list(LOAD), []
        code_killed = code
        before = persisted(resumed_out)
        saves = os.listdir(os.path.join(resumed_out, "checkpoints")) if os.path.isdir(os.path.join(resumed_out, "checkpoints")) else []
        # Step 1's whole result, not a pass's progress save (which resumes that pass from where it was).
        step1_saved = any(f.startswith("step1-") and not f.endswith(("-pass-a.npz", "-pass-b.npz")) for f in saves)
        resumed_s, code = run(resumed_out, args.images, env, extra)
        if code != 0:
            raise SystemExit(f"the resumed run failed (exit {code})")
        resumed = json.load(open(os.path.join(resumed_out, "_SUCCESS")))
        calls, full_calls = resumed["model_calls"], full["model_calls"]
        repeated = {family: max(0, before[name] + calls[family] - full_calls[family]) for name, family in CACHES.items()}
        restored = int(resumed["counts"].get("pass_a_restored_images", 0))
        restored_b = int(resumed["counts"].get("pass_b_restored_images", 0))
        # Probe images the target saw again: all of them after a finished Step 1 (it should load its
        # checkpoint instead); inside pass A, those beyond what the full run needed less the restored.
        repeated["target_probe_images"] = calls["target_probe_images"] if step1_saved else \
            max(0, calls["target_probe_images"] + restored + restored_b - full_calls["target_probe_images"])
        same = _neurons(full_out) == _neurons(resumed_out)
        print(json.dumps({
            "benchmark": "resume", "probe_images": args.images, "neurons": full["counts"]["neurons"],
            "full_run_s": round(full_s, 1), "killed_at_s": round(killed_s, 1), "resumed_part_s": round(resumed_s, 1),
            "killed_plus_resumed_s": round(killed_s + resumed_s, 1),
            "overhead_vs_full": round((killed_s + resumed_s) / full_s - 1, 3),
            "step1_checkpoint_before_kill": step1_saved, "persisted_before_resume": before,
            "model_calls_full": full_calls, "model_calls_resumed_part": calls,
            "repeated_model_calls": sum(repeated.values()), "repeated_by_family": repeated,
            "pass_a_images_restored": restored, "pass_b_images_restored": restored_b,
            "nodes": args.nodes, "lost": args.kill, "replacement_node_s": round(replacement_s, 1),
            "killed_part_exit_code": code_killed,
            "load_average_1m": {part: load_summary(samples) for part, samples in
                                (("full", full_load), ("killed", killed_load), ("resumed", list(LOAD)))},
            "same_results": same,
        }))
    finally:
        for node in nodes:
            node.stop()
        head.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def load_summary(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"mean": None, "max": None}
    return {"mean": round(sum(samples) / len(samples), 2), "max": round(max(samples), 2)}


def _neurons(out: str):
    import pyarrow.parquet as pq

    frame = pq.read_table(os.path.join(out, "neurons")).to_pandas().sort_values(["layer", "neuron"])
    return [(r.layer, int(r.neuron), r.label, r.status) for r in frame.itertuples()]


if __name__ == "__main__":
    main()
