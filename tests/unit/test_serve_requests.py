"""The Serve API's request checks (no Ray): every malformed input is a 4xx with a message; the
deploy files are valid Serve configs; the tiny file is what `dnd serve` serves by default."""

import base64
import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dnd.errors import ConfigError
from dnd.serve.requests import (
    ApiError,
    caption_payloads,
    decode_base64,
    decode_image,
    generate_request,
    multipart_parts,
)
from dnd.serve.settings import Limits

REPO = Path(__file__).resolve().parents[2]
LIMITS = Limits(max_images=3, max_prompts=2, max_prompt_chars=20, max_steps=10, max_side=64, max_image_pixels=10_000)
CAPS = {"backend": "diffusers", "request_options": ["steps", "height", "width"], "size_multiple": 8}


def png(size=(8, 6), colour=(10, 200, 30), mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(parts, boundary="XyZ"):
    body = b""
    for i, data in enumerate(parts):
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.png\"\r\n"
                 f"Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def status_of(call):
    with pytest.raises(ApiError) as info:
        call()
    assert info.value.message
    return info.value.status


def test_three_body_forms_give_the_same_bytes():
    a, b = png(), png((5, 5), (1, 2, 3))
    assert caption_payloads("image/png", a, LIMITS) == [a]
    assert caption_payloads("application/octet-stream", a, LIMITS) == [a]
    body, content_type = multipart([a, b])
    assert caption_payloads(content_type, body, LIMITS) == [a, b]
    data_url = "data:image/png;base64," + base64.b64encode(b).decode()
    wrapped = base64.encodebytes(a).decode()  # line breaks every 76 characters, as `base64` writes
    body = json.dumps({"images": [wrapped, data_url]}).encode()
    assert caption_payloads("application/json; charset=utf-8", body, LIMITS) == [a, b]


def test_multipart_keeps_binary_parts_byte_for_byte():
    # CRLFs, blank lines, dashes and the boundary's text, but never CRLF "--" boundary (RFC 2046).
    tricky = b"x--XyZ\r\n\r\n\x00\xff\r\n-XyZ\r\n\r\n--\r\n" * 50 + png()
    body, content_type = multipart([tricky, b"x"])
    assert multipart_parts(content_type, body) == [tricky, b"x"]
    quoted = content_type.replace("boundary=XyZ", 'boundary="XyZ"')
    assert multipart_parts(quoted, body) == [tricky, b"x"]


@pytest.mark.parametrize(
    "content_type, body, status",
    [
        ("image/png", b"", 400),
        ("text/plain", b"hello", 415),
        ("application/json", b"{not json", 400),
        ("application/json", b'{"imgs": []}', 422),
        ("application/json", b'{"images": "abc"}', 422),
        ("application/json", b'{"images": [1]}', 422),
        ("application/json", b'{"images": []}', 422),
        ("application/json", b'["a"]', 422),
        ("application/json", b'{"images": ["!!!not base64!!!"]}', 422),
        ("application/json", b'{"images": [""]}', 422),
        ("application/json", b'{"images": ["/etc/passwd"]}', None),  # valid base64 of junk: refused when decoded
        ("multipart/form-data", b"--a\r\n\r\nx\r\n--a--", 400),
        ("multipart/form-data; boundary=a", b"no delimiters at all", 400),
        ("multipart/form-data; boundary=a", b"--a\r\nno-separator--a--", 400),
    ],
)
def test_malformed_caption_bodies(content_type, body, status):
    if status is None:
        payloads = caption_payloads(content_type, body, LIMITS)
        assert status_of(lambda: decode_image(payloads[0], "image 0", LIMITS.max_image_pixels)) == 422
    else:
        assert status_of(lambda: caption_payloads(content_type, body, LIMITS)) == status


def test_too_many_images_is_422():
    body, content_type = multipart([png()] * 4)
    assert status_of(lambda: caption_payloads(content_type, body, LIMITS)) == 422


def test_images_that_cannot_be_decoded_or_are_absurdly_large():
    ok = decode_image(png(mode="RGBA", colour=(1, 2, 3, 4)), "image 0", 10_000)
    assert ok.mode == "RGB" and ok.size == (8, 6)
    for bad in (b"", b"GIF89a-but-not-really", png()[:40], b"\x89PNG\r\n\x1a\n" + b"\x00" * 30):
        assert status_of(lambda: decode_image(bad, "image 0", 10_000)) == 422
    assert status_of(lambda: decode_image(png((101, 100)), "image 0", 10_000)) == 422
    # A header claiming 100000 x 100000 pixels in a few bytes: refused before decoding.
    bomb = bytearray(png((1, 1)))
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2
    assert status_of(lambda: decode_image(bytes(bomb), "image 0", 10_000)) == 422


def test_base64_variants():
    data = png()
    standard = base64.b64encode(data).decode()
    assert decode_base64(standard, "x") == data
    assert decode_base64(base64.urlsafe_b64encode(data).decode().rstrip("="), "x") == data
    assert decode_base64(" \n" + standard + "\n", "x") == data


def body(**fields):
    return json.dumps(fields).encode()


def test_a_good_generate_request():
    parsed = generate_request(body(prompts=["a red car", "a dog"], seeds=[1, 2], steps=3, height=32, width=64),
                              "application/json", LIMITS, CAPS)
    assert parsed.prompts == ["a red car", "a dog"] and parsed.seeds == [1, 2]
    assert (parsed.steps, parsed.height, parsed.width, parsed.response) == (3, 32, 64, "auto")
    assert generate_request(json.dumps({"prompts": ["x"], "return": "uri"}).encode(), "application/json",
                            LIMITS, CAPS).response == "uri"


@pytest.mark.parametrize(
    "raw, content_type, status",
    [
        (b"", "application/json", 400),
        (body(prompts=["x"]), "text/plain", 415),
        (b"{", "application/json", 400),
        (body(prompt="x"), "application/json", 422),
        (body(prompts="x"), "application/json", 422),
        (body(prompts=[]), "application/json", 422),
        (body(prompts=[3]), "application/json", 422),
        (body(prompts=["a", "b", "c"]), "application/json", 422),
        (body(prompts=["   "]), "application/json", 422),
        (body(prompts=["x" * 21]), "application/json", 422),
        (body(prompts=["a", "b"], seeds=[1]), "application/json", 422),
        (body(prompts=["a"], seeds=[-1]), "application/json", 422),
        (body(prompts=["a"], seeds=[2**63]), "application/json", 422),
        (body(prompts=["a"], seeds=["1"]), "application/json", 422),
        (body(prompts=["a"], steps=0), "application/json", 422),
        (body(prompts=["a"], steps=10**9), "application/json", 422),
        (body(prompts=["a"], steps="5"), "application/json", 422),
        (body(prompts=["a"], steps=2.5), "application/json", 422),
        (body(prompts=["a"], height=100_000), "application/json", 422),
        (body(prompts=["a"], width=36), "application/json", 422),
        (body(prompts=["a"], width=0), "application/json", 422),
        (body(prompts=["a"], model="other/model"), "application/json", 422),
        (body(prompts=["a"], output_uri="/tmp/x"), "application/json", 422),
        (body(prompts=["a"], **{"return": "ftp"}), "application/json", 422),
    ],
)
def test_malformed_generate_requests(raw, content_type, status):
    assert status_of(lambda: generate_request(raw, content_type, LIMITS, CAPS)) == status


def test_per_request_options_the_backend_lacks_are_422():
    caps = {"backend": "synthetic", "request_options": [], "size_multiple": 1}
    assert status_of(lambda: generate_request(body(prompts=["a"], steps=3), "application/json", LIMITS, caps)) == 422


def test_deploy_files_are_serve_configs_and_tiny_is_the_default():
    from dnd.serve.launch import load_deploy_config, tiny_config

    assert yaml.safe_load((REPO / "deploy" / "serve-tiny.yaml").read_text()) == tiny_config()
    for name in ("serve.yaml", "serve-tiny.yaml"):
        config = load_deploy_config(REPO / "deploy" / name)
        assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
        assert config["applications"][0]["import_path"] == "dnd.serve.app:build_app"
    moved = load_deploy_config(None, host="0.0.0.0", port=8123)
    assert moved["http_options"] == {"host": "0.0.0.0", "port": 8123}


@pytest.mark.parametrize(
    "args, message",
    [
        ({"captioner": {"backend": "nope"}}, "unknown captioner backend"),
        ({"generator": {"backend": "serve"}}, "would call itself"),
        ({"captioner": {"backend": "hf", "batch": 3}}, "unknown key"),
        ({"limits": {"max_images": 0}}, "limits.max_images"),
        ({"token": "abc"}, "unknown key"),
    ],
)
def test_bad_application_args_fail_at_build_time(args, message):
    from dnd.serve.app import build_app

    with pytest.raises(ConfigError, match=message):
        build_app(args)


def test_a_failing_batch_is_retried_item_by_item_and_health_follows_failures():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from dnd.serve.app import _Failed, _ModelReplica

    replica = _ModelReplica()
    replica.family = "captioner"
    replica.backend = object()
    replica._executor = ThreadPoolExecutor(max_workers=1)
    replica.stats = {"model_calls": 0, "items": 0, "requests": 0, "largest_batch": 0, "failed_calls": 0}
    replica._consecutive_failures = 0

    def call(items):
        if "bad" in items:
            raise ValueError("cannot read this one")
        return [item.upper() for item in items]

    results = asyncio.run(replica._batch_or_each(["a", "bad", "c"], call))
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], _Failed) and "cannot read this one" in results[1].message
    assert replica.stats["model_calls"] == 2 and replica.stats["failed_calls"] == 2
    replica.check_health()  # the last call succeeded
    for _ in range(3):
        asyncio.run(replica._batch_or_each(["bad"], call))
    with pytest.raises(RuntimeError, match="model calls failed"):
        replica.check_health()
    replica._executor.shutdown()
