"""Load on the Serve captioner: many concurrent HTTP clients on 127.0.0.1 against the random-tiny app.

Starts a local Ray, deploys deploy/serve-tiny.yaml's application (captioner only) on a free port the
way `dnd serve` does, and has ``--clients`` threads (each with its own keep-alive connection) post
one PNG at a time to /v1/caption until ``--requests`` requests were sent or ``--duration`` seconds
passed. Prints one JSON line: requests/s, p50/p99 latency, the mean batch size of the model calls the
deployment made meanwhile (from /v1/models), and the count of 5xx answers (the target is 0).

With ``--kill-replica AT_S`` one captioner replica's worker process is SIGKILLed AT_S seconds into the
load (found through Ray's state API), with ``--replicas`` (default 2 then) captioner replicas so that
the loss is survivable; the JSON line then also reports the killed actor, the requests in flight at the
kill, the 5xx answered after it, the seconds until Serve reports the deployment healthy again with all
its replicas, and the requests/s before and after the kill.

    RAY_AUTH_MODE=disabled python benchmarks/serve_load.py [--clients 50] [--requests 2000] [--duration 60]
    RAY_AUTH_MODE=disabled python benchmarks/serve_load.py --kill-replica 10 --requests 1500 --duration 45
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
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


def captioner_stats(port: int, replicas: int) -> dict:
    """Each replica's counters, by replica id. /v1/models answers from whichever replica the router
    picks, so with several replicas it is read until every one has answered (bounded)."""
    seen: dict[str, dict] = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(20 * replicas):
        connection.request("GET", "/v1/models")
        info = json.loads(connection.getresponse().read())["captioner"]
        seen[info["replica"]] = info["stats"]
        if len(seen) >= replicas:
            break
    connection.close()
    return seen


def batch_figures(before: dict, after: dict) -> dict:
    """Model calls and items of the run, summed over the replicas read before and after it. A replica
    killed meanwhile took its counters with it; a replica started meanwhile counts from zero."""
    calls = items = 0
    for replica, stats in after.items():
        start = before.get(replica, {"model_calls": 0, "items": 0})
        calls += stats["model_calls"] - start["model_calls"]
        items += stats["items"] - start["items"]
    largest = max((stats["largest_batch"] for stats in after.values()), default=0)
    return {"model_calls": calls, "mean_batch_size": round(items / calls, 2) if calls else None,
            "largest_batch": largest}


class Load:
    """What the client threads share: the requests issued, those in flight, and every answer as
    (time answered, status, latency) so that figures can be cut at the kill moment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.issued = 0
        self.in_flight = 0
        self.answers: list[tuple[float, int, float]] = []
        self.failures: list[tuple[float, str]] = []
        self.first_answer = threading.Event()


def run_clients(port: int, payloads: list[bytes], clients: int, max_requests: int, duration_s: float,
                load: Load | None = None) -> dict:
    load = load or Load()
    lock = load.lock
    deadline = time.monotonic() + duration_s

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                if load.issued >= max_requests or time.monotonic() >= deadline:
                    break
                number = load.issued
                load.issued += 1
                load.in_flight += 1
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
                    load.in_flight -= 1
                    load.failures.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                continue
            answered = time.monotonic()
            with lock:
                load.in_flight -= 1
                load.answers.append((answered, status, answered - started))
            load.first_answer.set()
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ended = time.monotonic()
    statuses: dict[int, int] = {}
    for _, status, _ in load.answers:
        statuses[status] = statuses.get(status, 0) + 1
    return {"started": started, "ended": ended, "wall_s": ended - started,
            "latencies": [latency for _, _, latency in load.answers], "statuses": statuses,
            "failures": [message for _, message in load.failures], "issued": load.issued, "load": load}


# --- --kill-replica --------------------------------------------------------------------------------


def replica_actors(app: str, deployment: str, state: str = "ALIVE") -> list:
    """The deployment's replica actors in ``state``, from Ray's state API. Replica actors are of the
    class ServeReplica:<app>:<deployment>. The address is this cluster's own: other Ray clusters
    may run on the same machine, and the state API would refuse to guess between them."""
    import ray
    from ray.util.state import list_actors

    return list_actors(address=ray.get_runtime_context().gcs_address, detail=True, raise_on_missing_output=False,
                       filters=[("class_name", "=", f"ServeReplica:{app}:{deployment}"), ("state", "=", state)])


def actor_state(actor_id: str) -> str | None:
    import ray
    from ray.util.state import get_actor

    actor = get_actor(actor_id, address=ray.get_runtime_context().gcs_address)
    return actor.state if actor is not None else None


def deployment_health(app: str, deployment: str) -> tuple[str, dict]:
    from ray import serve

    application = serve.status().applications.get(app)
    overview = application.deployments.get(deployment) if application else None
    if overview is None:
        return "MISSING", {}
    return str(overview.status.value), {str(getattr(k, "value", k)): n for k, n in overview.replica_states.items()}


class Killer(threading.Thread):
    """Kills one replica's worker process with SIGKILL ``at_s`` seconds after the load starts (a real
    process death, as from the OOM killer: no graceful shutdown, no draining), then polls serve.status()
    until the deployment is HEALTHY with all ``replicas`` RUNNING again, or ``recover_timeout_s`` passed."""

    def __init__(self, load: Load, at_s: float, app: str, deployment: str, replicas: int,
                 recover_timeout_s: float, load_done: threading.Event):
        super().__init__(daemon=True)
        self.load, self.at_s, self.app, self.deployment = load, at_s, app, deployment
        self.replicas, self.recover_timeout_s, self.load_done = replicas, recover_timeout_s, load_done
        self.killed: dict | None = None
        self.kill_time: float | None = None
        self.in_flight_at_kill: int | None = None
        self.recovered_s: float | None = None
        self.error: str | None = None
        self.start_time = 0.0

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported in the JSON line, not lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        # The kill moment is a point in the load's timeline, hence a timed wait; it ends early if the
        # load finished first (then there is nothing to kill under load, which the JSON line says).
        if self.load_done.wait(timeout=max(0.0, self.start_time + self.at_s - time.monotonic())):
            self.error = f"the load ended before {self.at_s}s: nothing was killed (raise --requests or --duration)"
            return
        alive = sorted(replica_actors(self.app, self.deployment), key=lambda actor: actor.actor_id)
        if len(alive) < 2:
            self.error = f"{len(alive)} replica(s) of {self.deployment} alive: killing one would stop the service"
            return
        victim = alive[0]
        with self.load.lock:  # the same lock the clients count under: an exact snapshot at the kill
            os.kill(victim.pid, signal.SIGKILL)
            self.kill_time = time.monotonic()
            self.in_flight_at_kill = self.load.in_flight
        self.killed = {"actor_id": victim.actor_id, "pid": victim.pid, "name": victim.name}
        log(f"SIGKILLed replica {victim.name} (pid {victim.pid}) with {self.in_flight_at_kill} requests in flight")
        deadline = self.kill_time + self.recover_timeout_s
        status, states = deployment_health(self.app, self.deployment)
        # Serve's status lags the death (until the controller hears of it): recovery counts only once
        # the controller has shown the loss (its replacement STARTING, or the deployment UNHEALTHY), so
        # that a stale HEALTHY read right after the kill is not taken for it. The replacement loads
        # its model for many seconds, far longer than the polling interval, so the loss is always seen.
        seen_loss = False
        while time.monotonic() < deadline:
            status, states = deployment_health(self.app, self.deployment)
            healthy = status == "HEALTHY" and states == {"RUNNING": self.replicas}
            if not healthy:
                seen_loss = True
            elif seen_loss:
                self.recovered_s = time.monotonic() - self.kill_time
                log(f"{self.deployment} HEALTHY with {self.replicas} replicas {self.recovered_s:.1f}s after the kill")
                break
            time.sleep(0.25)
        self.killed["state_after"] = actor_state(victim.actor_id)
        self.killed["serve_status_last"] = {"status": status, "replicas": states}


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
    parser.add_argument("--replicas", type=int, default=None,
                        help="captioner replicas (default: the file's, 1; 2 with --kill-replica)")
    parser.add_argument("--kill-replica", type=float, nargs="?", const=10.0, default=None, metavar="AT_S",
                        help="SIGKILL one captioner replica AT_S seconds into the load (default AT_S 10)")
    parser.add_argument("--recover-timeout", type=float, default=180.0,
                        help="with --kill-replica: seconds to wait for the deployment to be healthy again "
                             "(default 180)")
    args = parser.parse_args()
    if args.kill_replica is not None and args.kill_replica < 0:
        parser.error(f"--kill-replica must be >= 0 seconds, got {args.kill_replica}")
    if args.replicas is not None and args.replicas < 1:
        parser.error(f"--replicas must be >= 1, got {args.replicas}")
    if args.kill_replica is not None and args.replicas is not None and args.replicas < 2:
        parser.error("--kill-replica needs --replicas >= 2: with one replica its loss stops the service")

    import ray
    from ray import serve

    from dnd.serve.launch import load_deploy_config, start
    from dnd.serve.settings import CAPTIONER, DEFAULT_APP

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
    # The replica count goes where any Serve config sets it: the deployment's num_replicas entry.
    deployment = next(d for d in app["deployments"] if d["name"] == CAPTIONER)
    if args.replicas is None and args.kill_replica is not None:
        args.replicas = 2
    if args.replicas is not None:
        deployment["num_replicas"] = args.replicas
    replicas = int(deployment.get("num_replicas", 1))
    config = load_deploy_config(config, port=port)  # checked again, as changed

    init: dict = {"include_dashboard": False}
    if args.kill_replica is not None:
        # Ray's state API (finding the replica's actor and pid) is served by the dashboard process; its
        # own free port, since other Ray clusters on this machine may hold the default one.
        init = {"include_dashboard": True, "dashboard_port": free_port()}
    ray.init(num_cpus=args.num_cpus, object_store_memory=300 * 1024 * 1024, log_to_driver=False, **init)
    killer = None
    try:
        plural = "s" if replicas > 1 else ""
        log(f"deploying the random-tiny captioner ({replicas} replica{plural}) on 127.0.0.1:{port}")
        start(config, log=log, timeout_s=600)
        payloads = images(64, args.image_size)
        warm = run_clients(port, payloads, 4, 16, 60)
        if warm["statuses"] != {200: 16}:
            raise SystemExit(f"warm-up failed: {warm['statuses']} {warm['failures'][:3]}")
        before = captioner_stats(port, replicas)
        load_before = os.getloadavg()[0]
        log(f"{args.clients} clients, at most {args.requests} requests or {args.duration:.0f}s"
            + (f"; one replica SIGKILLed at {args.kill_replica:.0f}s" if args.kill_replica is not None else ""))
        load, load_done = Load(), threading.Event()
        if args.kill_replica is not None:
            killer = Killer(load, args.kill_replica, DEFAULT_APP, CAPTIONER, replicas, args.recover_timeout, load_done)
            killer.start_time = time.monotonic()
            killer.start()
        result = run_clients(port, payloads, args.clients, args.requests, args.duration, load)
        load_done.set()
        load_after = os.getloadavg()[0]
        if killer is not None:
            log("load over; waiting for the deployment to recover")
            killer.join(timeout=args.recover_timeout + 60)
        after = captioner_stats(port, replicas)
    finally:
        serve.shutdown()
        ray.shutdown()

    latencies = result["latencies"]
    answered = len(latencies)
    batches = batch_figures(before, after)
    summary = {
        "benchmark": "serve_load",
        "target": f"POST /v1/caption, deploy/serve-tiny.yaml captioner (hf random-tiny BLIP, CPU, {replicas} "
                  f"replica{'s' if replicas > 1 else ''})",
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
        **batches,
        "max_batch_size": captioner["max_batch_size"],
        "batch_wait_timeout_s": captioner["batch_wait_timeout_s"],
        "replicas": replicas,
        "image": f"{args.image_size}x{args.image_size} PNG",
        "ray_cpus": args.num_cpus,
        "machine_cpus": os.cpu_count(),
        "load_avg_1m": [round(load_before, 2), round(load_after, 2)],
    }
    if killer is not None:
        summary.update(kill_summary(killer, result, args.kill_replica))
        summary["target_met"] = (killer.kill_time is not None
                                 and summary["5xx"] + summary["connection_errors"] <= killer.in_flight_at_kill)
    if result["failures"]:
        summary["first_connection_errors"] = result["failures"][:3]
    print(json.dumps(summary))
    return 0


def kill_summary(killer: Killer, result: dict, at_s: float) -> dict:
    """The --kill-replica figures: the kill, the errors on either side of it, recovery, and rates."""
    load = result["load"]
    out: dict = {"kill_at_s": at_s, "killed_replica": killer.killed, "in_flight_at_kill": killer.in_flight_at_kill,
                 "5xx": sum(1 for _, status, _ in load.answers if status >= 500)}
    if killer.error:
        out["kill_error"] = killer.error
    if killer.kill_time is None:
        return out
    kill, started, ended = killer.kill_time, result["started"], result["ended"]
    out["5xx_after_kill"] = sum(1 for t, status, _ in load.answers if status >= 500 and t >= kill)
    out["connection_errors_after_kill"] = sum(1 for t, _ in load.failures if t >= kill)
    out["recovered_s"] = round(killer.recovered_s, 2) if killer.recovered_s is not None else None
    before = sum(1 for t, status, _ in load.answers if t < kill and status == 200)
    after = sum(1 for t, status, _ in load.answers if t >= kill and status == 200)
    out["requests_per_s_before_kill"] = round(before / (kill - started), 2) if kill > started else None
    out["requests_per_s_after_kill"] = round(after / (ended - kill), 2) if ended > kill else None
    return out


if __name__ == "__main__":
    sys.exit(main())
