"""Load on the Serve captioner: many concurrent HTTP clients on 127.0.0.1 against the random-tiny app.

Starts a local Ray, deploys deploy/serve-tiny.yaml's application (captioner only) on a free port the
way `dnd serve` does, and has ``--clients`` threads (each with its own keep-alive connection) post
one PNG at a time to /v1/caption until ``--requests`` requests were sent or ``--duration`` seconds
passed. Prints one JSON line: requests/s, p50/p99 latency, the mean batch size of the model calls the
deployment made meanwhile (from /v1/models), and the count of 5xx answers (the target is 0).

    RAY_AUTH_MODE=disabled python benchmarks/serve_load.py [--clients 50] [--requests 2000] [--duration 60]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[serve_load] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def images(count: int, size: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def captioner_stats(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/v1/models")
    body = json.loads(connection.getresponse().read())
    connection.close()
    return body["captioner"]["stats"]


def run_clients(port: int, payloads: list[bytes], clients: int, max_requests: int, duration_s: float) -> dict:
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures: list[str] = []
    deadline = time.monotonic() + duration_s

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                if issued[0] >= max_requests or time.monotonic() >= deadline:
                    break
                number = issued[0]
                issued[0] += 1
            data = payloads[number % len(payloads)]
            started = time.monotonic()
            try:
                connection.request("POST", "/v1/caption", body=data, headers={"Content-Type": "image/png"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.monotonic() - started
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall_s": time.monotonic() - started, "latencies": latencies, "statuses": statuses,
            "failures": failures, "issued": issued[0]}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[position]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--requests", type=int, default=2000, help="stop after this many requests (default 2000)")
    parser.add_argument("--duration", type=float, default=60.0, help="or after this many seconds (default 60)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the random PNGs posted (default 64)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="captioner max_batch_size (default: the file's)")
    parser.add_argument("--batch-wait", type=float, default=None, help="captioner batch_wait_timeout_s (default: the file's)")
    args = parser.parse_args()

    import ray
    from ray import serve

    from dnd.serve.launch import load_deploy_config, start

    port = free_port()
    config = load_deploy_config(REPO / "deploy" / "serve-tiny.yaml", port=port)
    app = config["applications"][0]
    app["args"]["generator"] = None
    app["deployments"] = [d for d in app["deployments"] if d["name"] != "Generator"]
    captioner = app["args"]["captioner"]
    if args.max_batch_size is not None:
        captioner["max_batch_size"] = args.max_batch_size
    if args.batch_wait is not None:
        captioner["batch_wait_timeout_s"] = args.batch_wait

    ray.init(num_cpus=args.num_cpus, object_store_memory=300 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False)
    try:
        log(f"deploying the random-tiny captioner on 127.0.0.1:{port}")
        start(config, log=log, timeout_s=600)
        payloads = images(64, args.image_size)
        warm = run_clients(port, payloads, 4, 16, 60)
        if warm["statuses"] != {200: 16}:
            raise SystemExit(f"warm-up failed: {warm['statuses']} {warm['failures'][:3]}")
        before = captioner_stats(port)
        load_before = os.getloadavg()[0]
        log(f"{args.clients} clients, at most {args.requests} requests or {args.duration:.0f}s")
        result = run_clients(port, payloads, args.clients, args.requests, args.duration)
        load_after = os.getloadavg()[0]
        after = captioner_stats(port)
    finally:
        serve.shutdown()
        ray.shutdown()

    latencies = result["latencies"]
    calls = after["model_calls"] - before["model_calls"]
    items = after["items"] - before["items"]
    answered = len(latencies)
    summary = {
        "benchmark": "serve_load",
        "target": "POST /v1/caption, deploy/serve-tiny.yaml captioner (hf random-tiny BLIP, CPU, 1 replica)",
        "clients": args.clients,
        "requests": answered,
        "ok": result["statuses"].get(200, 0),
        "errors_5xx": sum(n for status, n in result["statuses"].items() if status >= 500),
        "errors_4xx": sum(n for status, n in result["statuses"].items() if 400 <= status < 500),
        "connection_errors": len(result["failures"]),
        "duration_s": round(result["wall_s"], 2),
        "requests_per_s": round(answered / result["wall_s"], 2) if result["wall_s"] else None,
        "latency_ms": {
            "p50": round(1000 * percentile(latencies, 50), 1) if latencies else None,
            "p99": round(1000 * percentile(latencies, 99), 1) if latencies else None,
            "max": round(1000 * max(latencies), 1) if latencies else None,
        },
        "model_calls": calls,
        "mean_batch_size": round(items / calls, 2) if calls else None,
        "largest_batch": after["largest_batch"],
        "max_batch_size": captioner["max_batch_size"],
        "batch_wait_timeout_s": captioner["batch_wait_timeout_s"],
        "image": f"{args.image_size}x{args.image_size} PNG",
        "ray_cpus": args.num_cpus,
        "machine_cpus": os.cpu_count(),
        "load_avg_1m": [round(load_before, 2), round(load_after, 2)],
    }
    if result["failures"]:
        summary["first_connection_errors"] = result["failures"][:3]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
