"""The model backends (captioners, generator, CLIP embedder) at random-tiny size, and the
openai-vision captioner against a vision chat stub on loopback."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"  # no test here may reach the Hugging Face Hub

import numpy as np
import pytest
from PIL import Image

from dnd.backends import load_backends
from dnd.captioning.base import CAPTIONERS, Captioner
from dnd.errors import ConfigError, DndError
from dnd.generation.base import GENERATORS, PROMPT_TEMPLATE, Generator
from dnd.selection.embedder import EMBEDDERS, Embedder
from dnd.tiny import TINY_WORDS

load_backends()

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (250, 250, 250)}


def solid(colour: str, size: tuple[int, int] = (48, 40)) -> Image.Image:
    return Image.new("RGB", size, COLOURS[colour])


def noise(seed: int) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (40, 56, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def probe_images() -> list[Image.Image]:
    return [solid("red"), solid("blue"), noise(1), noise(2).convert("L")]


# --------------------------------------------------------------------------------------------
# registration


def test_builtin_backends_register_once_and_reload_is_harmless(monkeypatch):
    import importlib

    import dnd.backends
    import dnd.captioning.hf

    load_backends()
    # Force the loader through its imports again (the flag would make a second call a no-op).
    monkeypatch.setattr(dnd.backends, "_loaded", False)
    load_backends()
    assert dnd.backends._loaded
    assert "hf" in CAPTIONERS.names() and "openai-vision" in CAPTIONERS.names()
    assert "diffusers" in GENERATORS.names()
    assert "clip" in EMBEDDERS.names()

    # A real reload re-runs the module's registration with a new class object: it replaces the old
    # one rather than failing as "registered twice".
    before = CAPTIONERS.get("hf")
    reloaded = importlib.reload(dnd.captioning.hf)
    assert CAPTIONERS.get("hf") is reloaded.HFCaptioner is not before

    # A different backend taking a used name is still refused, with both origins named.
    class Impostor:
        pass

    with pytest.raises(ValueError, match="registered twice") as caught:
        CAPTIONERS.register("hf")(Impostor)
    assert "dnd.captioning.hf.HFCaptioner" in str(caught.value)
    assert CAPTIONERS.get("hf") is reloaded.HFCaptioner


# --------------------------------------------------------------------------------------------
# hf captioner


@pytest.fixture(scope="module")
def tiny_captioner():
    return CAPTIONERS.create("hf", model="random-tiny", max_new_tokens=12)


def test_hf_random_tiny_captions_are_vocabulary_words(tiny_captioner, probe_images):
    assert isinstance(tiny_captioner, Captioner)
    captions = tiny_captioner.caption(probe_images)
    assert len(captions) == len(probe_images)
    vocabulary = set(TINY_WORDS)
    for caption in captions:
        assert isinstance(caption, str) and caption
        assert set(caption.split()) <= vocabulary, caption
    assert tiny_captioner.caption([]) == []


def test_hf_random_tiny_is_identical_across_instances_and_batches(tiny_captioner, probe_images):
    import torch

    torch.manual_seed(1234)
    expected_draw = torch.rand(3)
    torch.manual_seed(1234)
    other = CAPTIONERS.create("hf", model="random-tiny", max_new_tokens=12)
    batched = other.caption(probe_images)
    # Building and captioning must not move the caller's random stream.
    assert torch.equal(torch.rand(3), expected_draw)

    assert batched == tiny_captioner.caption(probe_images)
    assert [other.caption([image])[0] for image in probe_images] == batched


def test_hf_conditional_prompt_is_removed_from_captions(probe_images):
    captioner = CAPTIONERS.create("hf", model="random-tiny", max_new_tokens=8, prompt="a picture of")
    captions = captioner.caption(probe_images[:2])
    assert all(caption and not caption.startswith("a picture of") for caption in captions)
    # BLIP continues the prompt, so the raw output does start with it: the removal is real work.
    inputs = captioner._inputs(probe_images[:1])
    raw = captioner.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert captioner._tokenizer.decode(raw[0], skip_special_tokens=True).startswith("a picture of")


def test_hf_cache_key_names_every_output_option():
    keys = {
        CAPTIONERS.create("hf", model="random-tiny", **options).cache_key
        for options in ({}, {"max_new_tokens": 5}, {"num_beams": 2}, {"prompt": "a photo of"})
    }
    assert len(keys) == 4
    assert all(key.startswith("hf-caption|random-tiny|") for key in keys)


def test_hf_loads_a_saved_blip_through_from_pretrained(tmp_path, tiny_captioner, probe_images):
    from dnd.captioning.hf import build_tiny_blip

    processor, model = build_tiny_blip()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = CAPTIONERS.create("hf", model=str(tmp_path), max_new_tokens=12)
    assert type(loaded.model).__name__ == "BlipForConditionalGeneration"
    assert loaded.caption(probe_images) == tiny_captioner.caption(probe_images)
    assert str(tmp_path) in loaded.cache_key


def _save_tiny_blip2(directory) -> None:
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    from dnd.tiny import tiny_bert_tokenizer

    tokenizer = tiny_bert_tokenizer()
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        num_query_tokens=4,
    )
    vocab_size = len(tokenizer)  # the processor added BLIP-2's <image> token
    config = Blip2Config(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8
        ),
        qformer_config=dict(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            intermediate_size=64, encoder_hidden_size=32, max_position_embeddings=64,
        ),
        text_config=dict(
            model_type="opt", vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, ffn_dim=64,
            num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)


def test_hf_captions_with_blip2_through_the_same_backend(tmp_path, probe_images):
    _save_tiny_blip2(tmp_path)
    captioner = CAPTIONERS.create("hf", model=str(tmp_path), max_new_tokens=6)
    assert type(captioner.model).__name__ == "Blip2ForConditionalGeneration"
    captions = captioner.caption(probe_images)
    assert len(captions) == len(probe_images)
    # The decoder-only language model echoes its input; only the generated words come back.
    assert all(caption and set(caption.split()) <= set(TINY_WORDS) for caption in captions)
    assert all(len(caption.split()) <= 6 for caption in captions)


def _save_tiny_llava(directory) -> None:
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from dnd.tiny import tiny_bert_tokenizer

    tokenizer = tiny_bert_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    chat_template = (
        "{% for message in messages %}{{ message['role'] }}:{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %} <image>{% else %} {{ part['text'] }}{% endif %}{% endfor %}"
        "{% endfor %}{% if add_generation_prompt %} assistant:{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, image_size=32, patch_size=8, projection_dim=32,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)


def test_hf_captions_with_a_chat_vision_language_model(tmp_path, probe_images):
    _save_tiny_llava(tmp_path)
    captioner = CAPTIONERS.create("hf", model=str(tmp_path), max_new_tokens=5)
    assert captioner.chat and captioner.prompt == "Describe this image in one short sentence."
    # The instruction goes through the model's chat template, with the image placeholder in it.
    templated = captioner._tokenizer.decode(captioner._inputs(probe_images[:1])["input_ids"][0])
    assert templated.count("<image>") == 16 and "this image in one short" in templated
    captions = captioner.caption(probe_images)
    # Only the answer comes back, not the templated instruction before it.
    assert all(caption and set(caption.split()) <= set(TINY_WORDS) for caption in captions)
    assert all(len(caption.split()) <= 5 and "describe" not in caption for caption in captions)


def test_hf_refuses_models_it_cannot_caption_with(tmp_path):
    with pytest.raises(ConfigError, match="missing-model"):
        CAPTIONERS.create("hf", model=str(tmp_path / "missing-model"))
    from dnd.selection.clip import build_tiny_clip

    processor, model = build_tiny_clip()
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    with pytest.raises(ConfigError, match="not an image-to-text model"):
        CAPTIONERS.create("hf", model=str(tmp_path / "clip"))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"num_beams": "2"}, "num_beams"),
        ({"prompt": "  "}, "prompt"),
        ({"dtype": "float16", "device": "cpu"}, "float16"),
        ({"dtype": "int8"}, "int8"),
        ({"device": "tpu"}, "tpu"),
        ({"model": ""}, "model"),
    ],
)
def test_hf_bad_options_are_config_errors(options, message):
    settings = {"model": "random-tiny", **options}
    with pytest.raises(ConfigError, match=message):
        CAPTIONERS.create("hf", **settings)


# --------------------------------------------------------------------------------------------
# diffusers generator


@pytest.fixture(scope="module")
def tiny_generator():
    return GENERATORS.create("diffusers", model="random-tiny", batch_size=3)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(np.int16)


def tolerance(generator) -> int:
    """Same request, same image: bit for bit on the CPU. On a GPU the starting noise is still
    identical, but batched kernels round differently with the batch size, so a pixel may move by
    a level or two out of 255."""
    return 0 if generator.device == "cpu" else 2


def max_difference(first, second) -> int:
    return int(np.abs(pixels(first) - pixels(second)).max())


def test_diffusers_random_tiny_returns_one_rgb_image_per_request(tiny_generator):
    assert isinstance(tiny_generator, Generator)
    prompts = [PROMPT_TEMPLATE.format(concept) for concept in ("red door", "dog", "sky", "striped cat")]
    results = tiny_generator.generate(prompts, [0, 1, 2, 3])
    assert len(results) == 4
    for result in results:
        assert result.refused is None
        assert result.image.mode == "RGB" and result.image.size == (32, 32)
    assert tiny_generator.generate([], []) == []
    assert "steps=2" in tiny_generator.cache_key


def test_diffusers_image_depends_only_on_its_own_prompt_and_seed(tiny_generator):
    prompt = PROMPT_TEMPLATE.format("red door")
    alone = tiny_generator.generate([prompt], [7])[0]
    # The request sits in the second batch of three here, among other prompts and seeds.
    mixed = tiny_generator.generate(
        [PROMPT_TEMPLATE.format("dog"), "x", "y", "z", prompt],
        [1, 2, 3, 4, 7],
    )[4]
    assert max_difference(alone, mixed) <= tolerance(tiny_generator)

    again = GENERATORS.create("diffusers", model="random-tiny", batch_size=1).generate([prompt], [7])[0]
    assert max_difference(alone, again) <= tolerance(tiny_generator)

    # Another seed is another starting noise: a different picture.
    other_seed = tiny_generator.generate([prompt], [8])[0]
    assert np.abs(pixels(alone) - pixels(other_seed)).mean() > 20
    # Random weights listen to the text only faintly; a prompt that differs in many words still
    # changes the picture well beyond rounding.
    busy = PROMPT_TEMPLATE.format("many people walking in a busy city street")
    other_prompt = tiny_generator.generate([busy], [7])[0]
    assert np.abs(pixels(alone) - pixels(other_prompt)).mean() > 2


def test_diffusers_options_reach_the_pipeline():
    generator = GENERATORS.create(
        "diffusers", model="random-tiny", scheduler="DPMSolverMultistepScheduler", height=24, width=40, steps=3
    )
    assert type(generator.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
    [result] = generator.generate(["One realistic image of a dog"], [0])
    assert result.image.size == (40, 24)
    assert "scheduler=DPMSolverMultistepScheduler" in generator.cache_key
    assert "height=24|width=40" in generator.cache_key and "steps=3" in generator.cache_key


class _FlaggingPipeline:
    """Stands in for a pipeline whose safety checker flags the first image and whose second image
    came out black, to check how the backend reports them."""

    def __call__(self, prompt, generator, **options):
        images = [Image.new("RGB", (8, 8), (0, 0, 0)) for _ in prompt]
        images[2] = Image.new("RGB", (8, 8), (90, 120, 30))
        return SimpleNamespace(images=images, nsfw_content_detected=[True, False, False])

    def set_progress_bar_config(self, **options):
        pass


def test_diffusers_refuses_nsfw_and_empty_outputs():
    generator = GENERATORS.create("diffusers", model="random-tiny")
    generator.pipeline = _FlaggingPipeline()
    flagged, black, fine = generator.generate(["a", "b", "c"], [0, 1, 2])
    assert (flagged.image, flagged.refused) == (None, "nsfw filter")
    assert (black.image, black.refused) == (None, "empty output")
    assert fine.refused is None and fine.image.getpixel((0, 0)) == (90, 120, 30)


def test_diffusers_loads_a_saved_pipeline_through_from_pretrained(tmp_path, tiny_generator):
    from dnd.generation.diffusers_backend import build_tiny_stable_diffusion

    build_tiny_stable_diffusion().save_pretrained(tmp_path)
    loaded = GENERATORS.create("diffusers", model=str(tmp_path), steps=2, safety=False)
    assert type(loaded.pipeline).__name__ == "StableDiffusionPipeline"
    prompt = PROMPT_TEMPLATE.format("red door")
    assert max_difference(loaded.generate([prompt], [5])[0], tiny_generator.generate([prompt], [5])[0]) <= tolerance(loaded)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"scheduler": "FastestScheduler"}, "FastestScheduler"),
        ({"scheduler": "UNet2DConditionModel"}, "UNet2DConditionModel"),
        ({"height": 33}, "multiple of 2"),
        ({"steps": 0}, "steps"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"safety": "yes"}, "safety"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_diffusers_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        GENERATORS.create("diffusers", model="random-tiny", **options)


def test_diffusers_needs_one_seed_per_prompt(tiny_generator):
    with pytest.raises(DndError, match="2 prompts and 1 seeds"):
        tiny_generator.generate(["a", "b"], [0])


# --------------------------------------------------------------------------------------------
# CLIP embedder


@pytest.fixture(scope="module")
def tiny_clip():
    return EMBEDDERS.create("clip", model="random-tiny", batch_size=3)


def test_clip_embeddings_are_unit_rows_of_the_projection_size(tiny_clip, probe_images):
    assert isinstance(tiny_clip, Embedder)
    images = tiny_clip.embed_images(probe_images)
    texts = tiny_clip.embed_texts(["a red door", "a dog on the beach", "zebra!", "x " * 200])
    for embedding, rows in ((images, 4), (texts, 4)):
        assert embedding.shape == (rows, 16) and embedding.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    # Different inputs map to different directions.
    assert np.abs(images[0] - images[1]).max() > 1e-3
    assert np.abs(texts[0] - texts[1]).max() > 1e-3
    assert tiny_clip.embed_images([]).shape == (0, 16)
    assert tiny_clip.embed_texts([]).shape == (0, 16)


def test_clip_is_identical_across_instances_and_batch_sizes(tiny_clip, probe_images):
    other = EMBEDDERS.create("clip", model="random-tiny", batch_size=64)
    np.testing.assert_allclose(other.embed_images(probe_images), tiny_clip.embed_images(probe_images), atol=1e-6)
    np.testing.assert_allclose(other.embed_texts(["a red door"]), tiny_clip.embed_texts(["a red door"]), atol=1e-6)
    assert other.cache_key == tiny_clip.cache_key == "clip|random-tiny|dtype=float32"


def test_clip_loads_a_saved_model_through_from_pretrained(tmp_path, tiny_clip, probe_images):
    from dnd.selection.clip import build_tiny_clip

    processor, model = build_tiny_clip()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = EMBEDDERS.create("clip", model=str(tmp_path))
    np.testing.assert_allclose(loaded.embed_images(probe_images), tiny_clip.embed_images(probe_images), atol=1e-6)
    np.testing.assert_allclose(loaded.embed_texts(["a red door"]), tiny_clip.embed_texts(["a red door"]), atol=1e-6)


def test_clip_rejects_non_text(tiny_clip):
    with pytest.raises(ConfigError, match="strings"):
        tiny_clip.embed_texts(["a dog", None])


# --------------------------------------------------------------------------------------------
# openai-vision captioner against a stub vision chat server


class VisionStub:
    """Answers each chat request with the colour of the image it carries ("There is a picture of a
    red square."). ``plan`` maps a colour to HTTP statuses to send, in order, before answering."""

    def __init__(self, plan: dict[str, list[int]] | None = None):
        self.plan = {colour: list(statuses) for colour, statuses in (plan or {}).items()}
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = stub.answer(body, self.headers.get("Authorization"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, body: dict, authorization: str | None) -> tuple[int, dict]:
        import time

        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(0.05)  # long enough for concurrent requests to overlap
            [text_part, image_part] = body["messages"][0]["content"]
            url = image_part["image_url"]["url"]
            assert url.startswith("data:image/png;base64,")
            image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            colour = min(COLOURS, key=lambda c: sum(abs(a - b) for a, b in zip(COLOURS[c], image.getpixel((0, 0)))))
            with self.lock:
                self.requests.append({"body": body, "colour": colour, "size": image.size, "auth": authorization})
                statuses = self.plan.get(colour) or []
                status = statuses.pop(0) if statuses else 200
            if status != 200:
                return status, {"error": {"message": f"stub status {status}", "type": "stub", "code": status}}
            answer = f"There is a picture of a {colour} square."
            return 200, {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 9, "total_tokens": 109},
            }
        finally:
            with self.lock:
                self.in_flight -= 1

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vision_key(monkeypatch):
    monkeypatch.setenv("DND_TEST_VISION_KEY", "sk-test")
    return "DND_TEST_VISION_KEY"


def vision_captioner(stub, key_env, **options):
    settings = dict(model="stub-vision", base_url=stub.url, api_key_env=key_env, backoff_s=0.01, timeout_s=5)
    settings.update(options)
    return CAPTIONERS.create("openai-vision", **settings)


def test_openai_vision_sends_each_image_and_retries_server_errors(vision_key):
    colours = ["red", "green", "blue", "white"]
    with VisionStub(plan={"green": [500, 503]}) as stub:
        captioner = vision_captioner(stub, vision_key, max_concurrency=4)
        captions = captioner.caption([solid(colour, (20 + i, 10)) for i, colour in enumerate(colours)])
    # As the model wrote them (clean-up is the caption stage's, captioner.cleanup), and in the order
    # of the images although requests ran concurrently.
    assert captions == [f"There is a picture of a {colour} square." for colour in colours]
    assert sorted(r["colour"] for r in stub.requests) == sorted(colours + ["green", "green"])
    assert {r["colour"]: r["size"] for r in stub.requests} == {c: (20 + i, 10) for i, c in enumerate(colours)}
    assert {r["auth"] for r in stub.requests} == {"Bearer sk-test"}
    body = stub.requests[0]["body"]
    assert body["model"] == "stub-vision" and body["temperature"] == 0 and body["max_tokens"] == 60
    assert body["messages"][0]["content"][0]["text"] == captioner.prompt
    assert stub.max_in_flight > 1
    assert captioner.usage.requests == 6 and captioner.usage.retries == 2 and captioner.usage.failures == 0
    assert captioner.usage.prompt_tokens == 400 and captioner.usage.completion_tokens == 36
    assert captioner.errors == []


def test_openai_vision_failed_image_gets_empty_caption_and_an_error(vision_key):
    with VisionStub(plan={"red": [400], "blue": [503, 503, 503]}) as stub:
        captioner = vision_captioner(stub, vision_key, max_retries=2)
        captions = captioner.caption([solid("red"), solid("green"), solid("blue")])
    assert captions == ["", "There is a picture of a green square.", ""]
    errors = sorted(captioner.errors, key=lambda e: e["index"])
    # A client error is not retried; a server error is, until max_retries is spent.
    assert [(e["index"], e["attempts"]) for e in errors] == [(0, 1), (2, 3)]
    assert "BadRequestError" in errors[0]["error"] and "InternalServerError" in errors[1]["error"]
    assert captioner.usage.failures == 2 and captioner.usage.retries == 2


def test_openai_vision_needs_its_key_and_keys_its_cache_on_the_prompt(monkeypatch, vision_key):
    monkeypatch.delenv("DND_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ConfigError, match="DND_TEST_MISSING_KEY"):
        CAPTIONERS.create("openai-vision", api_key_env="DND_TEST_MISSING_KEY")
    first = CAPTIONERS.create("openai-vision", api_key_env=vision_key, base_url="http://127.0.0.1:9/v1")
    second = CAPTIONERS.create(
        "openai-vision", api_key_env=vision_key, base_url="http://127.0.0.1:9/v1", prompt="Caption it."
    )
    assert first.cache_key != second.cache_key
    assert first.cache_key.startswith("openai-vision|gpt-4o|http://127.0.0.1:9/v1/|")
    with pytest.raises(ConfigError, match="max_concurrency"):
        CAPTIONERS.create("openai-vision", api_key_env=vision_key, max_concurrency=0)
