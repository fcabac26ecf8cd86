"""Ray Data actor-pool options of a stage, from its config section (``pool_size``, ``num_cpus``,
``num_gpus``): one helper for every stage that runs a model in an actor pool."""

from __future__ import annotations

from typing import Any


def actor_pool_options(stage: Any) -> dict[str, Any]:
    """Keyword arguments for ``Dataset.map_batches`` running a callable class on ``stage``'s pool."""
    import ray

    options = {
        "compute": ray.data.ActorPoolStrategy(size=stage.pool_size),
        "num_gpus": stage.num_gpus,
        "num_cpus": stage.num_cpus,
        # Not set here: Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1, so a
        # killed actor (lost node, OOM-killer) is restarted and its unfinished batches rerun on it
        # (tests/cluster/test_ray_job.py kills one); passing them explicitly is deprecated in Ray 2.60.
    }
    if getattr(stage, "resources", None):
        options["resources"] = dict(stage.resources)  # only nodes that have them take the pool
    return options
