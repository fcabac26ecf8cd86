"""No silent hangs: a stage whose batches stop coming fails with a message, within a bounded time.

Ray Data waits without end for resources it cannot get: an actor pool asking for more CPU or GPU
than any live node has (a GPU config on a CPU-only cluster), or a cluster that lost the node its
stage needed. The driver then sits in ``iter_batches`` with nothing on screen. Every stage's batches
are read through :func:`watched`: when none arrives for ``ray.stall_timeout_s``, the run fails with
what the stage asks for per actor and what the cluster has, in all, free and on its largest node.
The clock runs only while the driver waits for the next batch, so a slow consumer never trips it;
a stage that is merely slow (a large model's first batch on CPU) needs a larger timeout.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator

from dnd.errors import DndError


class StageStalled(DndError):
    """A stage delivered no batch for the configured time. Its Ray Data execution is still running in
    this process (it cannot be stopped from here), so a command line ends the process after saying so."""

    abandons_work = True


def requests_of(stage: Any) -> dict[str, float]:
    """What one actor (or task) of ``stage`` (a config section with num_cpus/num_gpus) asks Ray for."""
    asks = {"CPU": float(getattr(stage, "num_cpus", 0) or 0), "GPU": float(getattr(stage, "num_gpus", 0) or 0),
            **{name: float(amount) for name, amount in (getattr(stage, "resources", None) or {}).items()}}
    return {name: value for name, value in asks.items() if value > 0}


def cluster_view() -> dict[str, Any]:
    """The cluster as the scheduler sees it: totals, what is free, and each live node's resources."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    return {"total": ray.cluster_resources(), "free": ray.available_resources(), "nodes": nodes}


def _amounts(resources: dict[str, float], names: Iterable[str]) -> str:
    return ", ".join(f"{float(resources.get(name, 0)):g} {name}" for name in names)


def describe_stall(what: str, asks: dict[str, float], timeout_s: float, view: dict[str, Any]) -> str:
    names = list(asks) or ["CPU"]
    message = (f"{what}: no batch for {timeout_s:g}s (ray.stall_timeout_s). One of its actors asks for "
               f"{_amounts(asks, names) if asks else 'no CPU or GPU'}; the cluster has {_amounts(view['total'], names)} "
               f"in all, {_amounts(view['free'], names)} free, on {len(view['nodes'])} live node(s)")
    fits = [node for node in view["nodes"] if all(float(node.get(n, 0)) >= v for n, v in asks.items())]
    if not fits and view["nodes"]:
        largest = max(view["nodes"], key=lambda node: tuple(float(node.get(n, 0)) for n in names))
        message += f", none of which can hold one (the largest has {_amounts(largest, names)})"
    return (message + ". Give the stage less (its num_cpus / num_gpus) or the cluster more; if it is only slow, "
            "raise ray.stall_timeout_s (null waits forever). Everything finished before is saved: the same command "
            "resumes the run")


def watched(batches: Iterable[Any], what: str, asks: dict[str, float], timeout_s: float | None) -> Iterator[Any]:
    """``batches``, failing with :class:`StageStalled` when none arrives for ``timeout_s`` seconds.

    The batches are pulled on a helper thread, at most two ahead of the consumer; an error raised
    while pulling is raised here, unchanged. ``timeout_s`` None: no limit."""
    if not timeout_s:
        yield from batches
        return
    handoff: queue.Queue = queue.Queue(maxsize=2)

    def pull() -> None:
        try:
            for batch in batches:
                handoff.put(("batch", batch))
            handoff.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it in the driver's thread
            handoff.put(("error", exc))

    threading.Thread(target=pull, daemon=True, name=f"dnd-batches-{what}").start()
    while True:
        try:
            kind, value = handoff.get(timeout=timeout_s)
        except queue.Empty:
            raise StageStalled(describe_stall(what, asks, timeout_s, cluster_view())) from None
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value


def stage_batches(dataset: Any, what: str, stage: Any, config: Any) -> Iterator[Any]:
    """A stage's Ray dataset as numpy batches, watched: ``stage`` is its pool's config section."""
    return watched(dataset.iter_batches(batch_size=None, batch_format="numpy"), what, requests_of(stage),
                   config.ray.stall_timeout_s)
