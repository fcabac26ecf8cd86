"""No silent hangs: a stage whose batches stop coming fails in bounded time and says why."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dnd import stall
from dnd.stall import StageStalled, describe_stall, requests_of, watched

SMOKE = str(Path(__file__).resolve().parents[2] / "examples" / "smoke.yaml")

VIEW = {"total": {"CPU": 3.0, "GPU": 0.0}, "free": {"CPU": 0.5}, "nodes": [{"CPU": 1.0}, {"CPU": 2.0}]}


class Section:
    num_cpus, num_gpus, resources = 0.5, 0.25, {"gpu_node": 0.01}


def test_batches_pass_through_in_order():
    assert list(watched(iter([1, 2, 3]), "step 2A (captions)", {"CPU": 0.5}, 5.0)) == [1, 2, 3]
    assert list(watched(iter([1, 2]), "step 2A (captions)", {"CPU": 0.5}, None)) == [1, 2]


def test_a_source_that_stops_delivering_fails_within_the_timeout(monkeypatch):
    monkeypatch.setattr(stall, "cluster_view", lambda: VIEW)
    never = threading.Event()

    def stuck():
        yield "first"
        never.wait()  # a pool Ray can never schedule: no batch, no error, no end
        yield "never"

    started = time.monotonic()
    seen = []
    with pytest.raises(StageStalled) as failure:
        for batch in watched(stuck(), "step 3 (image generation)", {"CPU": 0.5, "GPU": 1.0}, 0.3):
            seen.append(batch)
    assert seen == ["first"] and time.monotonic() - started < 5
    assert str(failure.value).startswith(
        "step 3 (image generation): no batch for 0.3s (ray.stall_timeout_s). One of its actors asks for 0.5 CPU, "
        "1 GPU; the cluster has 3 CPU, 0 GPU in all, 0.5 CPU, 0 GPU free, on 2 live node(s), none of which can hold "
        "one (the largest has 2 CPU, 0 GPU)")
    never.set()


def test_a_slow_consumer_does_not_count_as_a_stall():
    out = []
    for batch in watched(iter(range(3)), "step 1 pass A", {"CPU": 0.5}, 0.2):
        time.sleep(0.3)  # the driver's own work on a batch is not the stage's waiting
        out.append(batch)
    assert out == [0, 1, 2]


def test_an_error_while_pulling_batches_is_raised_unchanged():
    def failing():
        yield 1
        raise ValueError("decoder broke")

    with pytest.raises(ValueError, match="decoder broke"):
        list(watched(failing(), "step 2A (captions)", {"CPU": 0.5}, 5.0))


def test_a_pool_that_fits_a_node_is_not_called_unplaceable():
    message = describe_stall("step 2A (captions)", {"CPU": 0.5}, 600, VIEW)
    assert "none of which can hold one" not in message and "0.5 CPU free" in message
    assert requests_of(Section()) == {"CPU": 0.5, "GPU": 0.25, "gpu_node": 0.01}


def test_a_pool_pinned_to_a_lost_nodes_resource_is_called_unplaceable():
    message = describe_stall("step 1 pass A (probe activations)", {"CPU": 0.5, "dnd_worker_node": 0.1}, 60, VIEW)
    assert "asks for 0.5 CPU, 0.1 dnd_worker_node" in message and "none of which can hold one" in message


def test_custom_resources_reach_the_pool_and_name_only_custom_resources():
    import ray  # noqa: F401 - actor_pool_options builds Ray Data's strategy object, no cluster

    from dnd.config import load_config
    from dnd.errors import ConfigError
    from dnd.models.pools import actor_pool_options

    config = load_config(SMOKE, ["target.resources={gpu_node: 0.01}"])
    assert actor_pool_options(config.target)["resources"] == {"gpu_node": 0.01}
    assert "resources" not in actor_pool_options(load_config(SMOKE).target)
    with pytest.raises(ConfigError, match="resources names 'GPU', which num_cpus / num_gpus set"):
        load_config(SMOKE, ["target.resources={GPU: 1}"])
    with pytest.raises(ConfigError, match="resource 'gpu_node' needs an amount above 0, got 0"):
        load_config(SMOKE, ["target.resources={gpu_node: 0}"])
