"""No silent hangs: a stage whose batches stop coming fails in bounded time and says why."""

from __future__ import annotations

import threading
import time

import pytest

from dnd import stall
from dnd.stall import StageStalled, describe_stall, requests_of, watched

VIEW = {"total": {"CPU": 3.0, "GPU": 0.0}, "free": {"CPU": 0.5}, "nodes": [{"CPU": 1.0}, {"CPU": 2.0}]}


class Section:
    num_cpus, num_gpus = 0.5, 0.25


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
    assert requests_of(Section()) == {"CPU": 0.5, "GPU": 0.25}
