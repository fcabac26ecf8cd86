"""What a generator's failure does to a batch of Step 3 requests: a request it could not serve is a
counted refusal with its reason; a bug in a backend fails the stage loudly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dnd.errors import ConfigError, DndError
from dnd.generation.base import Generated
from dnd.generation.stage import GenerateActor


class Failing:
    def __init__(self, error: BaseException | None):
        self.error = error

    def generate(self, prompts, seeds):
        if self.error is not None:
            raise self.error
        return [Generated(Image.new("RGB", (8, 8), (200, 10, 10))) for _ in prompts]


def actor_with(generator) -> GenerateActor:
    actor = GenerateActor.__new__(GenerateActor)  # the stage's call, without building a real backend
    actor.generator, actor.image_format = generator, "png"
    return actor


def batch(n: int = 3) -> dict:
    return {"key": np.array([f"k{i}" for i in range(n)]), "prompt": np.array(["a red circle"] * n),
            "seed": np.arange(n)}


def test_images_come_back_when_the_generator_works():
    out = actor_with(Failing(None))(batch())
    assert list(out["refused"]) == ["", "", ""] and all(data[:4] == b"\x89PNG" for data in out["data"])


@pytest.mark.parametrize("error", [DndError("POST /v1/generate answered HTTP 503: overloaded"), MemoryError()])
def test_a_request_it_could_not_serve_is_refused_with_the_reason(error):
    out = actor_with(Failing(error))(batch())
    assert list(out["data"]) == [b"", b"", b""]
    assert all(reason.startswith(f"generator failed: {type(error).__name__}") for reason in out["refused"])


@pytest.mark.parametrize("error", [TypeError("generate() got an unexpected keyword"), ConfigError("steps must be > 0")])
def test_a_backend_bug_or_a_wrong_option_fails_loudly(error):
    with pytest.raises(type(error), match=str(error).split("(")[0]):
        actor_with(Failing(error))(batch())
