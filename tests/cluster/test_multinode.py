"""More than one machine, on loopback: the head plus a worker node with its own raylet, CPUs and a
custom resource naming it (`RayWorkerNode`). A `ray job submit` dissection whose target pool asks for
that resource (`target.resources`) runs its target actors on the worker node and the rest of the job
beside them, and writes every neuron once.

Then the worker node is lost (its raylet and workers SIGKILLed by process group, as a machine that
goes away), once inside Step 1 pass A and once inside Step 3. The target only runs where the lost
node's resource is, so the job cannot go on: it fails with one line, and the same command, once a
replacement node has joined, resumes it and ends with the undisturbed run's results, asking no model
again for what the first attempt had saved.

The target counts its forward passes and can be held at a gate (tests/support/counting_target.py),
so "inside pass A" and "inside Step 3" are states the run is held in, not moments a test hopes to hit.
"""

import os

import pytest
from ray.job_submission import JobStatus

from tests.cluster.conftest import BUCKET, REPO, RayWorkerNode, read_run, s3fs_for, submit, wait_for
from tests.cluster.test_ray_job import CACHES, OVERRIDES, assert_same_results, persisted_entries
from tests.support.counting_target import images_counted

pytestmark = pytest.mark.slow

#: The actor pools that run the target model: Step 1 pass A and Step 3 (ProbeActivations), pass B.
TARGET_POOLS = ("ProbeActivations", "AttentionCrops")
#: Pass A saves its progress every 20 probe images; the gate holds it after 40 of the 120.
SAVE_EVERY, HOLD_PASS_A_AT = 20, 40
#: How long a stage of the attempts that lose the node waits for the lost node's resource.
LOST_STALL_S = 75
EXPECTED = [("planted", n) for n in range(4)] + [("fc", n) for n in range(4)]


def overrides(count_dir, gate, stall_timeout_s=None):
    """The cluster tier's small job, with the counting target pinned to the worker node's resource.
    Read tasks of 10 images: pass A's batches reach the driver (and its saves) as each task's are
    done. ``stall_timeout_s`` for the attempts that lose the node: a stage that cannot get the
    resource fails that soon (Ray settings are not part of the config's digest, so the same command
    with the default resumes it)."""
    return [
        *(o for o in OVERRIDES if not o.startswith("neurons=")),
        "target.model=python:tests.support.counting_target:build", "target.weights=DEFAULT",
        f"target.options={{count_dir: '{count_dir}', gate: '{gate}'}}", "target.batch_size=10",
        "target.resources={dnd_worker_node: 0.1}", "probe.files_per_read_task=10", "layers=[planted, fc]", "neurons={planted: '0:4', fc: '0:4'}",
        f"output.checkpoint_images={SAVE_EVERY}",
        *([f"ray.stall_timeout_s={stall_timeout_s}"] if stall_timeout_s else []),
    ]


#: The job's workers import the counting target from this checkout.
JOB_ENV = {"PYTHONPATH": os.pathsep.join([os.path.join(REPO, "engine"), REPO])}


class Cluster:
    """The worker node of the moment: a test kills it and starts its replacement."""

    def __init__(self, head):
        self.head, self.node = head, RayWorkerNode(head).start()

    def replace(self):
        self.node.stop()
        self.node = RayWorkerNode(self.head).start()
        return self.node


@pytest.fixture(scope="module")
def cluster(ray_head):
    holder = Cluster(ray_head)
    try:
        yield holder
    finally:
        holder.node.stop()


@pytest.fixture(scope="module")
def gate_dir(tmp_path_factory):
    """The count folders and the gate; on /tmp, which both nodes of this machine see."""
    return tmp_path_factory.mktemp("gate")


def attempt_paths(gate_dir, name):
    counts = gate_dir / name
    counts.mkdir()
    return counts, gate_dir / f"{name}.gate"


def actors_of(head, submission_id):
    """(class name, node id) of every actor the job started, from Ray's state API."""
    from ray.util.state import list_actors

    job_id = head.client().get_job_info(submission_id).job_id
    actors = list_actors(address=head.dashboard, filters=[("job_id", "=", job_id)], limit=10_000, detail=True,
                         raise_on_missing_output=False)
    return [(a.class_name, a.node_id) for a in actors if a.node_id]


def assert_every_neuron_once(frame):
    keys = list(zip(frame["layer"], frame["neuron"].astype(int)))
    assert sorted(keys) == sorted(EXPECTED), keys
    assert (frame["status"] == "ok").all(), frame[["layer", "neuron", "status", "error"]]


@pytest.fixture(scope="module")
def reference(ray_head, s3, cluster, gate_dir):
    """The undisturbed two-node run every lost-node run must equal (no gate file: nothing held)."""
    counts, gate = attempt_paths(gate_dir, "reference")
    submit(ray_head, s3, "runs/two-nodes", overrides(counts, gate), "dnd-two-nodes", env=JOB_ENV)
    status, logs = wait_for(ray_head, "dnd-two-nodes")
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    frame, manifest = read_run(s3, "runs/two-nodes")
    return {"frame": frame, "manifest": manifest, "images": images_counted(counts),
            "actors": actors_of(ray_head, "dnd-two-nodes"), "node": cluster.node.node_id}


def test_a_job_uses_actors_on_both_nodes_and_writes_every_neuron_once(ray_head, reference):
    frame, manifest = reference["frame"], reference["manifest"]
    assert_every_neuron_once(frame)
    assert manifest["counts"]["neurons"] == len(frame) == len(set(zip(frame["layer"], frame["neuron"])))
    target = {where for name, where in reference["actors"] if any(pool in name for pool in TARGET_POOLS)}
    # The target's pools ran where their resource is, and only there; the job's other actors
    # (Ray Data's own beside the driver, the captioner and generator) ran on the head as well.
    assert target == {reference["node"]}
    head_node = {n.node_id for n in ray_head.nodes() if n.is_head_node}
    assert {where for _, where in reference["actors"]} == head_node | target


def wait_for_file(s3, folder, suffix, submission_id, head, timeout=300):
    """Poll the bucket until a file ending in ``suffix`` is under ``folder``; fail if the job ends first."""
    import time

    fs = s3fs_for(s3)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if fs.exists(folder) and any(f.endswith(suffix) for f in fs.find(folder)):
            return
        status = head.client().get_job_status(submission_id)
        assert status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED), \
            head.client().get_job_logs(submission_id)[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no {suffix} under {folder} within {timeout}s")


def assert_one_line_failure(status, logs, stage):
    """The job failed, and said so in one line naming the stage and the way back."""
    assert status == JobStatus.FAILED, logs[-4000:]
    errors = [line for line in logs.splitlines() if line.startswith("dnd: error:")]
    assert len(errors) == 1, logs[-4000:]
    assert stage in errors[0] and "same command" in errors[0], errors[0]
    return errors[0]


def resume_with_a_new_node(head, s3, cluster, prefix, counts, gate, submission_id, reference):
    """Open the gate, let a replacement node join, and submit the same command again (with the
    default stall timeout): it must succeed with every neuron once and the undisturbed results."""
    gate.unlink()
    cluster.replace()
    submit(head, s3, prefix, overrides(counts, gate), submission_id, env=JOB_ENV)
    status, logs = wait_for(head, submission_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    frame, manifest = read_run(s3, prefix)
    assert_every_neuron_once(frame)
    assert_same_results(frame, reference["frame"])
    return logs, manifest


def test_node_lost_in_pass_a_fails_in_one_line_and_the_same_command_resumes_from_the_last_save(
        ray_head, s3, cluster, gate_dir, reference):
    prefix = "runs/lost-in-pass-a"
    counts, gate = attempt_paths(gate_dir, "pass-a")
    gate.write_text(str(HOLD_PASS_A_AT))
    submit(ray_head, s3, prefix, overrides(counts, gate, LOST_STALL_S), "dnd-lost-a-1", env=JOB_ENV)
    # Held after 40 probe images, so pass A has saved at 20 (and maybe 40) and cannot end.
    wait_for_file(s3, f"{BUCKET}/{prefix}/checkpoints", "-pass-a.npz", "dnd-lost-a-1", ray_head)
    assert images_counted(counts) < 120
    cluster.node.kill()
    status, logs = wait_for(ray_head, "dnd-lost-a-1")
    line = assert_one_line_failure(status, logs, "step 1")
    if "no batch for" in line:
        # The cluster shrank below what pass A asks for, and the stall watchdog says so: what one
        # actor asks for, and what the one node left has.
        assert "asks for 0.5 CPU, 0.1 dnd_worker_node" in line and "0 dnd_worker_node in all" in line, line
        assert "on 1 live node(s), none of which can hold one" in line, line
    else:  # or Ray reported the pass's actor lost with the node
        assert "lost a node, worker or object" in line, line

    logs, manifest = resume_with_a_new_node(ray_head, s3, cluster, prefix, counts, gate, "dnd-lost-a-2", reference)
    assert "pass A resumes from its last save" in logs
    full = reference["manifest"]
    restored = manifest["counts"]["pass_a_restored_images"]
    assert SAVE_EVERY <= restored <= HOLD_PASS_A_AT
    # Every probe image went through the target once across the saved and the resumed part.
    assert restored + manifest["model_calls"]["target_probe_images"] == full["model_calls"]["target_probe_images"]
    for family in CACHES.values():  # nothing after pass A had been asked of any model yet
        assert manifest["model_calls"][family] == full["model_calls"][family], family


def test_node_lost_in_step_3_fails_in_one_line_and_the_same_command_resumes_without_asking_again(
        ray_head, s3, cluster, gate_dir, reference):
    prefix = "runs/lost-in-step-3"
    counts, gate = attempt_paths(gate_dir, "step-3")
    full = reference["manifest"]
    # Step 3's images are the target's last: held at its first batch of generated images.
    gate.write_text(str(reference["images"] - full["model_calls"]["target_generated_images"]))
    submit(ray_head, s3, prefix, overrides(counts, gate, LOST_STALL_S), "dnd-lost-3-1", env=JOB_ENV)
    status, logs = wait_for(ray_head, "dnd-lost-3-1", until_log="step 3: ")
    assert status not in (JobStatus.SUCCEEDED, JobStatus.FAILED), logs[-3000:]
    wait_for_file(s3, f"{BUCKET}/{prefix}/cache/generated", ".parquet", "dnd-lost-3-1", ray_head)
    cluster.node.kill()
    status, logs = wait_for(ray_head, "dnd-lost-3-1")
    assert_one_line_failure(status, logs, "step 3")
    persisted = persisted_entries(s3, prefix)
    assert persisted["captions"] > 0 and persisted["concepts"] > 0 and persisted["generated"] > 0

    logs, manifest = resume_with_a_new_node(ray_head, s3, cluster, prefix, counts, gate, "dnd-lost-3-2", reference)
    assert "resuming the unfinished run" in logs
    assert manifest["run"]["step1_from_checkpoint"] and manifest["model_calls"]["target_probe_images"] == 0
    for name, family in CACHES.items():
        # What the lost attempt saved was read back, not asked again: both attempts together asked
        # each model exactly what the undisturbed run asked.
        assert persisted[name] + manifest["model_calls"][family] == full["model_calls"][family], (name, persisted)
