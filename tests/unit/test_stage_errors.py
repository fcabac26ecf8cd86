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
