"""A real Ray head on 127.0.0.1 (with its dashboard, for job submission) and an S3 server (moto).

Every port is chosen here and the head gets its own --temp-dir, so these tests never touch another
Ray instance on the machine; teardown stops exactly the processes whose command line names that
temp dir (``ray stop`` would stop every Ray of this user).
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["HF_HUB_OFFLINE"] = "1"

BUCKET = "dnd-cluster"
KEY = SECRET = "testing"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "examples", "smoke.yaml")


def free_ports(n):
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def ray_env():
    env = dict(os.environ)
    env.update({"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    return env


def _processes_of(temp_dir):
    import psutil

    found = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in process.info["cmdline"] or ()):
                found[process.pid] = process
                for child in process.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_cluster(temp_dir):
    import psutil

    processes = _processes_of(temp_dir)
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=15)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


class RayHead:
    def __init__(self):
        # Short path: Ray's unix sockets live under the temp dir and their paths have a length limit.
        self.temp_dir = tempfile.mkdtemp(prefix="dndc-", dir="/tmp")
        (self.port, self.dashboard_port, self.client_port, self.agent_port, self.agent_grpc_port,
         self.runtime_env_port, self.metrics_port, self.node_manager_port, self.object_manager_port) = free_ports(9)
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.address = f"127.0.0.1:{self.port}"

    def start(self):
        command = [
            "ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(self.client_port),
            "--dashboard-agent-listen-port", str(self.agent_port), "--dashboard-agent-grpc-port", str(self.agent_grpc_port),
            "--runtime-env-agent-port", str(self.runtime_env_port), "--metrics-export-port", str(self.metrics_port),
            "--node-manager-port", str(self.node_manager_port), "--object-manager-port", str(self.object_manager_port),
            "--num-cpus", "2", "--object-store-memory", "300000000", "--temp-dir", self.temp_dir, "--disable-usage-stats",
        ]
        subprocess.run(command, check=True, env=ray_env(), capture_output=True, timeout=420)
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 90
        while True:
            try:
                JobSubmissionClient(self.dashboard).list_jobs()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard)

    def nodes(self):
        """The cluster's nodes from Ray's state API (through the dashboard)."""
        from ray.util.state import list_nodes

        return list_nodes(address=self.dashboard, limit=100, detail=True)

    def stop(self):
        stop_cluster(self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class RayWorkerNode:
    """Another node of ``head``'s cluster on this machine: its own raylet, its own CPUs and a custom
    resource naming it, started by ``ray start --address ... --block`` in a process group of its own,
    so a test can stop it, or kill it like a lost machine, by that group."""

    def __init__(self, head, num_cpus=2, resource="dnd_worker_node"):
        self.head, self.num_cpus, self.resource = head, num_cpus, resource
        (self.node_manager_port, self.object_manager_port, self.agent_port, self.agent_grpc_port,
         self.runtime_env_port, self.metrics_port) = free_ports(6)
        self.process = None
        self.node_id = None

    def start(self, timeout=120):
        import json

        command = [
            "ray", "start", "--address", self.head.address, "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(self.num_cpus), "--resources", json.dumps({self.resource: 1}),
            "--object-store-memory", "200000000", "--node-manager-port", str(self.node_manager_port),
            "--object-manager-port", str(self.object_manager_port), "--dashboard-agent-listen-port", str(self.agent_port),
            "--dashboard-agent-grpc-port", str(self.agent_grpc_port), "--runtime-env-agent-port", str(self.runtime_env_port),
            "--metrics-export-port", str(self.metrics_port), "--disable-usage-stats", "--block",
        ]
        self.process = subprocess.Popen(command, env=ray_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        # Ready when the head's state API lists it alive (with its resource): state, not a sleep.
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [n for n in self.head.nodes() if n.state == "ALIVE" and self.resource in (n.resources_total or {})]
            if found:
                self.node_id = found[0].node_id
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start of the worker node exited with {self.process.returncode}")
            time.sleep(0.5)
        raise TimeoutError(f"the worker node did not join {self.head.address} within {timeout}s")

    def processes(self):
        import psutil

        try:
            parent = psutil.Process(self.process.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self):
        """SIGKILL the node's raylet, its workers and everything they started, as a lost machine."""
        import psutil

        processes = self.processes()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for process in processes:  # any that left the group (a raylet may start its own session)
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=15)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.kill()


# Package scope (tests/cluster is a package): the head and its dashboard, agents and monitors are
# stopped when this tier's last test ends, instead of idling beside the integration and unit tiers
# for the rest of the session and taking CPU time from them.
@pytest.fixture(scope="package")
def ray_head():
    head = RayHead()
    try:
        head.start()
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="package")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                              region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield {"endpoint": endpoint, "client": client,
               # What a job's runtime_env carries: the standard AWS variables, nothing dnd-specific.
               "env": {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}}
    finally:
        server.stop()


def s3fs_for(s3):
    import s3fs

    return s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={"endpoint_url": s3["endpoint"]},
                             skip_instance_cache=True)


def read_run(s3, prefix):
    """The neurons table and _SUCCESS of the run at s3://BUCKET/prefix, read straight from the bucket."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    fs = s3fs_for(s3)
    files = sorted(f for f in fs.find(f"{BUCKET}/{prefix}/neurons") if f.endswith(".parquet"))
    table = pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files])
    body = s3["client"].get_object(Bucket=BUCKET, Key=f"{prefix}/_SUCCESS")["Body"].read()
    return table.to_pandas(), json.loads(body)


def submit(head, s3, prefix, overrides, submission_id, extra_args=(), env=None):
    """``ray job submit`` (CLI, no waiting) of ``dnd dissect`` on the smoke config, writing to S3;
    ``env``: more environment variables for the job's driver and workers."""
    import json

    # Exactly what a user types after `--` (the ray CLI quotes each word for the job's shell).
    words = ["dnd", "dissect", SMOKE, "--out", f"s3://{BUCKET}/{prefix}", *extra_args]
    for override in overrides:
        words += ["--set", override]
    runtime_env = {"env_vars": {**s3["env"], "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", **(env or {})}}
    subprocess.run(
        ["ray", "job", "submit", "--address", head.dashboard, "--submission-id", submission_id, "--no-wait",
         "--runtime-env-json", json.dumps(runtime_env), "--", *words],
        check=True, env=ray_env(), capture_output=True, timeout=120,
    )


def wait_for(head, submission_id, timeout=600, until_log=None):
    """Wait for a job to end (or, with ``until_log``, for that text in its logs); returns (status, logs)."""
    from ray.job_submission import JobStatus

    client = head.client()
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(submission_id)
        # The whole log is fetched only when a line is awaited or the job has ended: the dashboard
        # serving it twice a second takes CPU from the job on a two-CPU machine.
        logs = client.get_job_logs(submission_id) if until_log is not None else None
        if logs is not None and until_log in logs:
            return status, logs
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status, client.get_job_logs(submission_id)
        time.sleep(0.5)
    raise TimeoutError(f"job {submission_id} still {status} after {timeout}s:\n{client.get_job_logs(submission_id)[-3000:]}")

