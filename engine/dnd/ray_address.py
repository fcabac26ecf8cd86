"""A local run must not try to join a Ray head that is no longer there.

``ray start --head`` records its GCS address in ``ray_current_cluster`` under Ray's temp folder
(``$RAY_TMPDIR/ray``, else ``$TMPDIR/ray`` on Linux, else ``/tmp/ray``), and ``ray stop`` removes
the record. A head killed by a signal leaves it behind, and ``ray.init()`` without an address joins
whatever it names: the join then fails with Ray's "object_store_memory must not be provided", which
says nothing about a dead head. Ray's own helpers find and read the record, so the path is the one
``ray.init()`` itself reads.
"""

from __future__ import annotations

import socket

from dnd.errors import ConfigError

#: Seconds to wait for the recorded head to accept a connection. A live head on the same network
#: accepts at once, and a dead one on this machine refuses at once; this only bounds a far host.
CONNECT_TIMEOUT_S = 2.0


def recorded_head() -> tuple[str, str] | None:
    """(the record's path, the head address it holds), or None when Ray has no record."""
    try:
        from ray._common.utils import get_ray_address_file
        from ray._private.utils import read_ray_address
    except ImportError:  # a Ray whose private helpers moved: no check, ray.init() behaves as it always did
        return None

    # None: the default temp folder, the one ray.init() reads when it is given no _temp_dir.
    address = read_ray_address(None)
    return (get_ray_address_file(None), address) if address else None


def head_answers(address: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at the head's GCS ``host:port``."""
    from ray._common.network_utils import parse_address

    parsed = parse_address(address)
    if parsed is None:
        return False  # not host:port: ray.init() could not join it either
    host, port = parsed
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def refuse_dead_recorded_head() -> None:
    """Raise one clear :class:`ConfigError` when Ray would auto-join a recorded head that is gone.

    Call it only when no address is configured (neither ``ray.address`` nor ``RAY_ADDRESS``): with
    one, Ray does not read the record. A live recorded head is left alone, so the run joins it as
    ``ray.init()`` always has.
    """
    found = recorded_head()
    if found is None:
        return
    path, address = found
    if head_answers(address):
        return
    raise ConfigError(
        f"Ray's record {path} names a cluster head at {address} that does not answer (a head stopped "
        "without `ray stop` leaves it behind), and a local run would try to join it: remove that file "
        "or run `ray stop`, or set ray.address or RAY_ADDRESS to a live cluster"
    )
