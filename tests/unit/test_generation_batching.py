"""Step 3's generation on an accelerator: ``dtype: auto`` (float16 on CUDA, float32 on the CPU) and
prompts of different concepts sharing one pipeline call, each image still decided by its own seed.
CPU only: the CUDA side is checked through the plan the stage makes before any actor exists."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from dnd.config import GeneratorConfig
from dnd.generation.base import Generated
from dnd.generation.diffusers_backend import DiffusersGenerator, concrete_dtype
from dnd.generation.stage import GenerateActor, generator_key, image_seed, planned_device, planned_stage


# --------------------------------------------------------------------------------------------
# dtype: auto


@pytest.mark.parametrize(("dtype", "device", "expected"), [
    ("auto", "cpu", "float32"),
    ("auto", "cuda", "float16"),
    ("auto", "cuda:1", "float16"),
    ("auto", "mps", "float32"),
    ("float32", "cuda", "float32"),
    ("bfloat16", "cuda", "bfloat16"),
])
def test_auto_dtype_is_half_precision_on_cuda_only(dtype, device, expected):
    assert concrete_dtype(dtype, device) == expected


@pytest.mark.parametrize(("stage", "expected"), [
    (GeneratorConfig(), "cpu"),                                            # no GPU asked of Ray
    (GeneratorConfig(num_gpus=0.25), "cuda"),
    (GeneratorConfig(num_gpus=1, device="cpu"), "cpu"),
    (GeneratorConfig(options={"device": "cuda:1"}), "cuda"),
    (GeneratorConfig(num_gpus=1, options={"device": "cpu"}), "cpu"),       # the backend's own option wins
    (GeneratorConfig(options={"device": "auto"}), "cpu"),                  # never a GPU the pool did not ask for
])
def test_the_stage_plans_the_device_as_its_actors_will_resolve_it(stage, expected):
    assert planned_device(stage) == expected


def test_the_plan_names_the_dtype_the_actors_will_run():
    assert planned_stage(GeneratorConfig()).options == {"dtype": "float32"}
    assert planned_stage(GeneratorConfig(num_gpus=0.25)).options == {"dtype": "float16"}
    assert planned_stage(GeneratorConfig(num_gpus=1, options={"dtype": "bfloat16"})).options == {"dtype": "bfloat16"}
    assert planned_stage(GeneratorConfig(num_gpus=1, options={"dtype": "float32"})).options == {"dtype": "float32"}
    # Backends without a plan (synthetic, serve) keep their options as written.
    assert planned_stage(GeneratorConfig(backend="synthetic")).options == {}


def test_cache_identity_changes_only_when_the_images_would():
    cpu = {generator_key(GeneratorConfig(options=options))
           for options in ({}, {"dtype": "auto"}, {"dtype": "float32"})}
    assert len(cpu) == 1  # three ways of saying float32 on the CPU share their images
    gpu_half = generator_key(GeneratorConfig(num_gpus=1))
    gpu_full = generator_key(GeneratorConfig(num_gpus=1, options={"dtype": "float32"}))
    assert gpu_half not in cpu  # float16 images never answer for float32 requests
    assert gpu_full in cpu      # float32 on a GPU is the same request as on the CPU, as before


def test_random_tiny_on_the_cpu_runs_and_names_float32():
    generator = DiffusersGenerator(model="random-tiny", device="cpu")
    assert generator.dtype == "float32"
    assert "|dtype=float32|" in generator.cache_key
    assert next(generator.pipeline.unet.parameters()).dtype.is_floating_point
    assert str(next(generator.pipeline.unet.parameters()).dtype) == "torch.float32"


# --------------------------------------------------------------------------------------------
# prompts of several concepts in one call


class Recording:
    """Wraps a pipeline: records each call's prompts and per-image generator seeds."""

    def __init__(self, pipeline):
        self.pipeline, self.calls = pipeline, []

    def __call__(self, prompt, generator, **options):
        self.calls.append((list(prompt), [g.initial_seed() for g in generator]))
        return self.pipeline(prompt=prompt, generator=generator, **options)

    def __getattr__(self, name):
        return getattr(self.pipeline, name)


@pytest.fixture(scope="module")
def tiny() -> DiffusersGenerator:
    return DiffusersGenerator(model="random-tiny", device="cpu", batch_size=8)


def concept_requests(concepts: list[str], q: int) -> tuple[list[str], list[int]]:
    # As the stage asks: the i-th image of every concept has the same seed.
    prompts = [f"One realistic image of {c}" for c in concepts for _ in range(q)]
    seeds = [image_seed(0, i) for _ in concepts for i in range(q)]
    return prompts, seeds


def test_prompts_of_several_concepts_share_one_call_with_each_image_its_own_seed(tiny, monkeypatch):
    prompts, seeds = concept_requests(["red circle", "blue square"], 3)
    recording = Recording(tiny.pipeline)
    monkeypatch.setattr(tiny, "pipeline", recording)
    together = tiny.generate(prompts, seeds)
    assert recording.calls == [(prompts, seeds)]  # one call, both concepts, seeds in request order
    assert len(together) == 6 and all(isinstance(g, Generated) for g in together)

    # Each image is the one its concept gets alone: batching changes the speed, not the images.
    for start in (0, 3):
        alone = tiny.generate(prompts[start : start + 3], seeds[start : start + 3])
        for mixed, single in zip(together[start : start + 3], alone):
            a = np.asarray(mixed.image, dtype=np.int16) if mixed.image is not None else None
            b = np.asarray(single.image, dtype=np.int16) if single.image is not None else None
            assert (a is None) == (b is None)
            if a is not None:
                assert np.abs(a - b).max() <= 2  # float rounding of a larger batch only
    # Three calls in all since the recording started: the mixed one and one per concept.
    assert [len(p) for p, _ in recording.calls] == [6, 3, 3]


def test_a_batch_larger_than_the_backend_batch_splits_in_request_order(tiny, monkeypatch):
    prompts, seeds = concept_requests(["a", "b", "c"], 4)  # 12 requests, backend batch 8
    recording = Recording(tiny.pipeline)
    monkeypatch.setattr(tiny, "pipeline", recording)
    assert len(tiny.generate(prompts, seeds)) == 12
    assert recording.calls == [(prompts[:8], seeds[:8]), (prompts[8:], seeds[8:])]


class ByPrompt:
    """A generator whose image says which prompt and seed it was made for: red is the prompt's last
    letter, green the seed."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, seeds):
        self.calls.append(list(prompts))
        return [Generated(Image.new("RGB", (8, 8), (ord(p[-1]), seed % 256, 7))) for p, seed in zip(prompts, seeds)]


def test_the_stage_actor_maps_each_image_of_a_mixed_batch_back_to_its_request():
    from io import BytesIO

    generator = ByPrompt()
    actor = GenerateActor.__new__(GenerateActor)  # the stage's call, without building a real backend
    actor.generator, actor.image_format = generator, "png"
    prompts = ["One realistic image of cat", "One realistic image of sky", "One realistic image of cat"]
    seeds = [11, 11, 12]
    out = actor({"key": np.array(["k0", "k1", "k2"]), "prompt": np.array(prompts), "seed": np.array(seeds)})
    assert generator.calls == [prompts]  # one call for both concepts
    assert list(out["key"]) == ["k0", "k1", "k2"]
    for data, prompt, seed in zip(out["data"], prompts, seeds):
        pixel = Image.open(BytesIO(data)).getpixel((0, 0))
        assert pixel == (ord(prompt[-1]), seed, 7)
