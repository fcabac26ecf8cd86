"""A dead head's record in Ray's temp folder: a local run names it and the ways out, in one line.

Ray's temp folder is pointed at ``tmp_path`` through ``RAY_TMPDIR`` (Ray reads it before TMPDIR and
/tmp), so these tests never read or write the real record. ``ray.init`` is replaced by a stand-in
that stops the run where Ray would start or join a cluster, so no Ray is started either.
"""

from __future__ import annotations

import socket

import pytest

from dnd.config import load_config
from dnd.errors import ConfigError
from dnd.pipeline import init_ray

LOCAL_RUN = """
target: {model: "torchvision:resnet18", weights: none}
layers: [fc]
probe: {sources: [{uri: /data/probe}]}
ray: {address: null, object_store_memory: 100000000}
"""


class ReachedRayInit(Exception):
    """init_ray got as far as ray.init; its keyword arguments are the exception's argument."""


@pytest.fixture
def ray_temp(tmp_path, monkeypatch):
    """Ray's temp folder under tmp_path, no configured address, and ray.init stopped before it runs."""
    import ray

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def stand_in(**kwargs):
        raise ReachedRayInit(kwargs)

    monkeypatch.setattr(ray, "init", stand_in)
    folder = tmp_path / "ray"
    folder.mkdir()
    return folder


def record(folder, address: str):
    """What `ray start --head` leaves in Ray's temp folder."""
    path = folder / "ray_current_cluster"
    path.write_text(address)
    return path


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released, never listened)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_dead_recorded_head_stops_a_local_run_with_one_line(ray_temp):
    port = closed_port()
    path = record(ray_temp, f"127.0.0.1:{port}")
    from ray._private.services import get_ray_address_from_environment

    # the record is where ray.init() looks: without the check it would try to join this address
    assert get_ray_address_from_environment(None, None) == f"127.0.0.1:{port}"
    with pytest.raises(ConfigError) as caught:
        init_ray(load_config(LOCAL_RUN))
    message = str(caught.value)
    assert message == (
        f"Ray's record {path} names a cluster head at 127.0.0.1:{port} that does not answer (a head stopped "
        "without `ray stop` leaves it behind), and a local run would try to join it: remove that file "
        "or run `ray stop`, or set ray.address or RAY_ADDRESS to a live cluster"
    )
    assert "\n" not in message


def test_a_live_recorded_head_is_joined_as_before(ray_temp):
    with socket.socket() as head:  # a listening socket stands for the live head's GCS port
        head.bind(("127.0.0.1", 0))
        head.listen(1)
        record(ray_temp, f"127.0.0.1:{head.getsockname()[1]}")
        with pytest.raises(ReachedRayInit) as reached:
            init_ray(load_config(LOCAL_RUN))
    # no address passed: ray.init() itself joins the recorded head, as it did before this check
    assert "address" not in reached.value.args[0]


def test_without_a_record_or_with_an_address_the_record_is_not_consulted(ray_temp, monkeypatch):
    with pytest.raises(ReachedRayInit):
        init_ray(load_config(LOCAL_RUN))  # no record: a fresh local cluster
    record(ray_temp, f"127.0.0.1:{closed_port()}")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    with pytest.raises(ReachedRayInit) as reached:
        init_ray(load_config(LOCAL_RUN))  # an address given: Ray never reads the record
    assert reached.value.args[0]["address"] == "127.0.0.1:6379"
