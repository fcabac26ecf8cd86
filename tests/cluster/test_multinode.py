"""More than one machine, on loopback: the head plus a worker node with its own raylet, CPUs and a
custom resource naming it (`RayWorkerNode`). A `ray job submit` dissection runs on both nodes and
writes every neuron once."""

import pytest
from ray.job_submission import JobStatus

from tests.cluster.conftest import RayWorkerNode, read_run, submit, wait_for
from tests.cluster.test_ray_job import OVERRIDES, assert_every_neuron_once

pytestmark = pytest.mark.slow


@pytest.fixture
def worker_node(ray_head):
    node = RayWorkerNode(ray_head).start()
    try:
        yield node
    finally:
        node.stop()


def nodes_that_ran(head, submission_id):
    """Ids of the nodes on which the job's tasks and actors ran, from Ray's state API."""
    from ray.util.state import list_actors, list_tasks

    job_id = head.client().get_job_info(submission_id).job_id
    tasks = list_tasks(address=head.dashboard, filters=[("job_id", "=", job_id)], limit=10_000, detail=True,
                       raise_on_missing_output=False)
    actors = list_actors(address=head.dashboard, filters=[("job_id", "=", job_id)], limit=10_000, detail=True,
                         raise_on_missing_output=False)
    return {t.node_id for t in tasks if t.node_id} | {a.node_id for a in actors if a.node_id}


def test_a_job_runs_on_both_nodes_and_writes_every_neuron_once(ray_head, s3, worker_node):
    nodes = {n.node_id for n in ray_head.nodes() if n.state == "ALIVE"}
    assert len(nodes) == 2 and worker_node.node_id in nodes
    submit(ray_head, s3, "runs/two-nodes", OVERRIDES, "dnd-two-nodes")
    status, logs = wait_for(ray_head, "dnd-two-nodes")
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    frame, manifest = read_run(s3, "runs/two-nodes")
    assert_every_neuron_once(frame)
    assert manifest["counts"]["neurons"] == len(frame) == len(set(zip(frame["layer"], frame["neuron"])))
    # Ray Data spreads the stages' reads and pools over the cluster: both nodes ran part of the job.
    assert nodes_that_ran(ray_head, "dnd-two-nodes") == nodes
