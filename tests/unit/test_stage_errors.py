"""A stage's failure reaches the user as one line naming the stage (dnd/stage_errors.py)."""

from __future__ import annotations

import pytest

from dnd.errors import ConfigError, DndError
from dnd.stage_errors import dnd_error_inside, named_stage

# What Ray 2.60 prints for a Ray Data actor whose constructor raised (abridged, colour codes kept).
ACTOR_DIED = """The actor died because of an error raised in its creation task, \x1b[36mray::MapWorker(MapBatches(CaptionActor)).__init__()\x1b[39m (pid=1, ip=127.0.0.1)
  File "/venv/ray/data/_internal/planner/plan_udf_map_op.py", line 673, in init_fn
    udf_instances[udf_key] = spec.instantiation_class(
  File "engine/dnd/captioning/hf.py", line 151, in _load
    raise ConfigError(f"cannot load the captioning model {model!r}: {exc}") from None
dnd.errors.ConfigError: cannot load the captioning model 'no/such-model': not found offline"""


class ActorDiedError(Exception):
    """Stands in for ray.exceptions.ActorDiedError: only its text carries the worker's error."""


class RayTaskError(Exception):
    def __init__(self, text: str, cause: BaseException):
        super().__init__(text)
        self.cause = cause


def test_the_error_inside_is_found_by_cause_chain_or_by_traceback_text():
    original = ConfigError("bad option")
    assert dnd_error_inside(RayTaskError("ray::task failed", original)) is original
    try:
        try:
            raise original
        except ConfigError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert dnd_error_inside(outer) is original
    found = dnd_error_inside(ActorDiedError(ACTOR_DIED))
    assert isinstance(found, ConfigError)
    assert str(found) == "cannot load the captioning model 'no/such-model': not found offline"
    assert dnd_error_inside(ValueError("nothing of ours")) is None


def test_a_stage_failure_is_one_line_with_the_stage_name():
    with pytest.raises(ConfigError) as caught:
        with named_stage("step 2A (captions)"):
            raise ActorDiedError(ACTOR_DIED)
    assert str(caught.value) == ("step 2A (captions): cannot load the captioning model 'no/such-model': "
                                 "not found offline")
    assert caught.value.__suppress_context__


def test_a_constructor_bug_is_one_line_and_a_batch_bug_keeps_its_traceback():
    died = ACTOR_DIED.replace("dnd.errors.ConfigError: cannot load", "TypeError: __init__() got an unexpected keyword")
    with pytest.raises(DndError, match=r"^step 3 \(generation and selection\): an actor could not start \(TypeError: "
                                       r"__init__\(\) got an unexpected keyword"):
        with named_stage("step 3 (generation and selection)"):
            raise ActorDiedError(died)
    with pytest.raises(ZeroDivisionError):
        with named_stage("step 1"):
            raise ZeroDivisionError("division by zero")
    # A DndError raised on the driver passes unchanged.
    with pytest.raises(ConfigError, match="^as it was$"):
        with named_stage("step 1"):
            raise ConfigError("as it was")


# What reached the driver when a worker node was SIGKILLed during Step 3 (Ray 2.60, abridged): Ray
# Data's file listing had run on that node, and its failure arrived as text only.
LISTING_LOST = """Failed to unpickle serialized exception
Original exception: ray.exceptions.RayTaskError: ray::ListFiles() (pid=4242, ip=127.0.0.1)
ray.exceptions.NodeDiedError: The node with node id: 1f2e running at 127.0.0.1 has died."""


def test_work_lost_with_a_node_is_one_line_that_says_the_same_command_resumes():
    import ray.exceptions

    from dnd.stage_errors import lost_to_the_cluster

    with pytest.raises(DndError) as caught:
        with named_stage("step 3 (generation and selection)"):
            raise ray.exceptions.UnserializableException(LISTING_LOST)
    message = str(caught.value)
    assert message.startswith("step 3 (generation and selection): the Ray cluster lost a node, worker or object "
                              "it was using (NodeDiedError)")
    assert "run the same command again to resume" in message and "\n" not in message
    assert caught.value.__suppress_context__
    # Ray's own classes, raised as themselves or as the cause of another error, subclasses included.
    assert lost_to_the_cluster(ray.exceptions.NodeDiedError("node 1f2e died")) == "NodeDiedError"
    lost = ray.exceptions.ObjectLostError("ab" * 14, None, "")
    assert lost_to_the_cluster(RayTaskError("ray::MapBatches failed", lost)) == "ObjectLostError"
    assert lost_to_the_cluster(ray.exceptions.OwnerDiedError("ab" * 14, None, "")) == "OwnerDiedError"
    try:
        try:
            raise ray.exceptions.WorkerCrashedError()
        except ray.exceptions.WorkerCrashedError as inner:
            raise RuntimeError("batch failed") from inner
    except RuntimeError as outer:
        assert lost_to_the_cluster(outer) == "WorkerCrashedError"
    # A worker killed for memory says what to change instead.
    with pytest.raises(DndError, match=r"^step 1: Ray's memory monitor killed one of its workers \(OutOfMemoryError\)"):
        with named_stage("step 1"):
            raise ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
    # Look-alikes are not lost work: our stand-in class, a bug whose text merely says "died".
    assert lost_to_the_cluster(ActorDiedError("the actor died")) is None
    assert lost_to_the_cluster(ValueError("the node with the parent died")) is None
    assert lost_to_the_cluster(RuntimeError("torch.OutOfMemoryError: CUDA out of memory")) is None
    with pytest.raises(RayTaskError):  # a bug in a batch keeps its traceback
        with named_stage("step 2B (concepts)"):
            raise RayTaskError("ray::task failed", KeyError("x"))
