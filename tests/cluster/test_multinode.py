"""More than one machine, on loopback: the head plus a worker node with its own raylet, CPUs and a
custom resource naming it (`RayWorkerNode`). A `ray job submit` dissection whose target pool asks for
that resource (`target.resources`) runs its target actors on the worker node and the rest of the job
beside them, and writes every neuron once."""

import pytest
from ray.job_submission import JobStatus

from tests.cluster.conftest import RayWorkerNode, read_run, submit, wait_for
from tests.cluster.test_ray_job import OVERRIDES, assert_every_neuron_once

pytestmark = pytest.mark.slow

PINNED = [*OVERRIDES, "target.resources={dnd_worker_node: 0.1}"]
#: The actor pools that run the target model: Step 1 pass A and Step 3 (ProbeActivations), pass B.
TARGET_POOLS = ("ProbeActivations", "AttentionCrops")


def actors_of(head, submission_id):
    """(class name, node id) of every actor the job started, from Ray's state API."""
    from ray.util.state import list_actors

    job_id = head.client().get_job_info(submission_id).job_id
    actors = list_actors(address=head.dashboard, filters=[("job_id", "=", job_id)], limit=10_000, detail=True,
                         raise_on_missing_output=False)
    return [(a.class_name, a.node_id) for a in actors if a.node_id]


def test_a_job_uses_actors_on_both_nodes_and_writes_every_neuron_once(ray_head, s3):
    node = RayWorkerNode(ray_head).start()
    try:
        nodes = {n.node_id for n in ray_head.nodes() if n.state == "ALIVE"}
        assert len(nodes) == 2 and node.node_id in nodes
        submit(ray_head, s3, "runs/two-nodes", PINNED, "dnd-two-nodes")
        status, logs = wait_for(ray_head, "dnd-two-nodes")
        assert status == JobStatus.SUCCEEDED, logs[-4000:]
        actors = actors_of(ray_head, "dnd-two-nodes")
    finally:
        node.stop()
    frame, manifest = read_run(s3, "runs/two-nodes")
    assert_every_neuron_once(frame)
    assert manifest["counts"]["neurons"] == len(frame) == len(set(zip(frame["layer"], frame["neuron"])))
    target = {where for name, where in actors if any(pool in name for pool in TARGET_POOLS)}
    # The target's pools ran where their resource is, and only there; the job's other actors
    # (Ray Data's own beside the driver, the captioner and generator) ran on the head as well.
    assert target == {node.node_id}
    assert {where for _, where in actors} == nodes
