"""No silent hangs: a job whose stage asks for more than any live node has fails within
ray.stall_timeout_s, with a message naming the stage, its request and the cluster's resources."""

import pytest
from ray.job_submission import JobStatus

from tests.cluster.conftest import submit, wait_for

pytestmark = pytest.mark.slow

STALL_S = 20


def test_a_pool_no_node_can_hold_fails_in_bounded_time_and_says_why(ray_head, s3):
    # The head has no GPU: Step 1's target pool, asking for one, can never start. Without the watch
    # the job waits forever with nothing in its log.
    submit(ray_head, s3, "runs/stalled", [
        "probe.sources=[{uri: 'gen://shapes?n=40&seed=0&size=64'}]", "neurons={layer2: '0:2', fc: '0:2'}",
        "target.num_gpus=1", f"ray.stall_timeout_s={STALL_S}",
    ], "dnd-stalled")
    status, logs = wait_for(ray_head, "dnd-stalled", timeout=STALL_S + 240)
    assert status == JobStatus.FAILED, logs[-3000:]
    errors = [line for line in logs.splitlines() if line.startswith("dnd: error:")]
    assert len(errors) == 1, logs[-3000:]
    assert f"step 1 pass A (probe activations): no batch for {STALL_S}s (ray.stall_timeout_s)" in errors[0]
    assert "One of its actors asks for 0.5 CPU, 1 GPU" in errors[0]
    assert "on 1 live node(s), none of which can hold one (the largest has" in errors[0]
    assert "Traceback" not in logs
