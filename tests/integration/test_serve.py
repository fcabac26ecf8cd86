"""The Serve application on 127.0.0.1 with the random-tiny models (deploy/serve-tiny.yaml, deployed
the way `dnd serve` does): every endpoint, malformed requests, the bearer token, dynamic batching,
the engine as a client (handles and HTTP), and a reduced smoke dissection with both backends
`serve` compared with the same run's in-pipeline backends.

One Serve application, started once for the module in the integration tier's local Ray.
"""

import base64
import io
import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.integration.conftest import smoke_config

REPO = Path(__file__).resolve().parents[2]
TOKEN = "tiny-test-token-3f9a"
TOKEN_ENV = "DND_TEST_SERVE_TOKEN"
PROMPTS = ["One realistic image of red car", "One realistic image of dog"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url, output_dir):
        self.url = url
        self.output_dir = output_dir

    def call(self, method, path, data=None, content_type=None, token=TOKEN, headers=None):
        """(status, parsed JSON body or raw bytes) of one request; never raises on HTTP errors."""
        all_headers = dict(headers or {})
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def stats(self, family):
        status, body = self.call("GET", "/v1/models")
        assert status == 200, body
        return body[family]["stats"]


@pytest.fixture(scope="module")
def server(local_ray, tmp_path_factory):
    from ray import serve

    from dnd.serve.launch import load_deploy_config, start

    port = free_port()
    output_dir = tmp_path_factory.mktemp("serve-output")
    config = load_deploy_config(REPO / "deploy" / "serve-tiny.yaml", port=port)
    app = config["applications"][0]
    app["args"]["generator"]["output_uri"] = str(output_dir)
    app["args"]["token_env"] = TOKEN_ENV
    app["runtime_env"] = {"env_vars": {TOKEN_ENV: TOKEN, "HF_HUB_OFFLINE": "1"}}
    start(config, log=lambda message: None, timeout_s=600)
    served = Server(f"http://127.0.0.1:{port}", output_dir)
    served.config = config  # what was deployed: a test redeploys it with other replica counts
    try:
        yield served
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def tiny_smoke_options():
    smoke = yaml.safe_load((REPO / "examples" / "smoke.yaml").read_text())
    return smoke["captioner"]["options"], smoke["generator"]["options"]


@pytest.fixture(scope="module")
def local_models(tiny_smoke_options):
    """The backends the pipeline would build for examples/smoke.yaml, in this process."""
    from dnd.backends import load_backends
    from dnd.captioning.base import CAPTIONERS
    from dnd.generation.base import GENERATORS

    load_backends()
    captioner_options, generator_options = tiny_smoke_options
    return (CAPTIONERS.create("hf", device="cpu", **captioner_options),
            GENERATORS.create("diffusers", device="cpu", **generator_options))


def png(size=(48, 40), seed=0):
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(seed=1):
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png(seed=seed))).save(buffer, format="JPEG")
    return buffer.getvalue()


def multipart(parts, boundary="dndBoundary7"):
    body = b""
    for i, data in enumerate(parts):
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.bin\"\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def decoded(data):
    from dnd.probe.decode import decode_rgb

    return decode_rgb(data)


# --- endpoints ----------------------------------------------------------------------------------


def test_healthz_and_openapi_need_no_token(server):
    status, body = server.call("GET", "/v1/healthz", token=None)
    assert status == 200
    assert body == {"status": "ok", "deployments": {"captioner": "ok", "generator": "ok"}}
    status, document = server.call("GET", "/v1/openapi.json", token=None)
    assert status == 200
    assert {"/v1/caption", "/v1/generate", "/v1/healthz", "/v1/models"} <= set(document["paths"])
    caption_body = document["paths"]["/v1/caption"]["post"]["requestBody"]["content"]
    assert {"image/*", "application/octet-stream", "multipart/form-data", "application/json"} <= set(caption_body)
    generate_body = document["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompts", "seeds", "steps", "height", "width", "return"} <= set(generate_body["properties"])
    assert any(scheme.get("scheme") == "bearer" for scheme in document["components"]["securitySchemes"].values())
    status, page = server.call("GET", "/v1/docs", token=None)
    assert status == 200 and b"openapi.json" in page


def test_models_describes_the_backends_limits_and_counters(server, local_models):
    captioner, generator = local_models
    status, body = server.call("GET", "/v1/models")
    assert status == 200
    assert body["api"] == "v1" and body["auth"] is True
    assert body["captioner"]["backend"] == "hf" and body["generator"]["backend"] == "diffusers"
    # The deployments built the very classes the pipeline builds, with the same options.
    assert body["captioner"]["cache_key"] == captioner.cache_key
    assert body["generator"]["cache_key"] == generator.cache_key
    assert body["generator"]["request_options"] == ["steps", "height", "width"]
    assert body["limits"]["max_images"] == 32 and body["limits"]["max_prompts"] == 16
    for family in ("captioner", "generator"):
        assert {"model_calls", "items", "requests", "mean_batch_size"} <= set(body[family]["stats"])
        assert body[family]["max_batch_size"] >= 8


def test_caption_accepts_raw_multipart_and_base64_json_alike(server, local_models):
    captioner, _ = local_models
    images = [png(seed=1), jpeg(seed=2), png((7, 300), seed=3)]
    expected = captioner.caption([decoded(data) for data in images])

    raw = [server.call("POST", "/v1/caption", data, content_type)
           for data, content_type in zip(images, ("image/png", "image/jpeg", "application/octet-stream"))]
    assert [status for status, _ in raw] == [200, 200, 200]
    assert [body["captions"][0] for _, body in raw] == expected
    assert raw[0][1]["model"] == captioner.cache_key

    body, content_type = multipart(images)
    status, answer = server.call("POST", "/v1/caption", body, content_type)
    assert status == 200 and answer["captions"] == expected

    strings = [base64.b64encode(images[0]).decode(), "data:image/jpeg;base64," + base64.b64encode(images[1]).decode(),
               base64.encodebytes(images[2]).decode()]
    status, answer = server.call("POST", "/v1/caption", json.dumps({"images": strings}).encode(), "application/json")
    assert status == 200 and answer["captions"] == expected


def test_generate_inline_by_uri_and_with_per_request_options(server, local_models):
    _, generator = local_models
    expected = generator.generate(PROMPTS, [11, 12])
    request = {"prompts": PROMPTS, "seeds": [11, 12]}
    status, answer = server.call("POST", "/v1/generate", json.dumps(request).encode(), "application/json")
    assert status == 200, answer
    assert answer["model"] == generator.cache_key
    for entry, want, prompt, seed in zip(answer["images"], expected, PROMPTS, [11, 12]):
        assert (entry["prompt"], entry["seed"], entry["refused"], entry["uri"]) == (prompt, seed, None, None)
        assert np.array_equal(np.asarray(decoded(base64.b64decode(entry["png_base64"]))), np.asarray(want.image))

    # By URI: PNGs under the server's prefix, named by what made them (the same request, the same file).
    status, answer = server.call("POST", "/v1/generate", json.dumps({**request, "return": "uri"}).encode(),
                                 "application/json")
    assert status == 200
    for entry, want in zip(answer["images"], expected):
        assert entry["png_base64"] is None and entry["uri"].startswith(str(server.output_dir))
        assert np.array_equal(np.asarray(decoded(Path(entry["uri"]).read_bytes())), np.asarray(want.image))
    # auto: more than inline_max_images (4) prompts go to the prefix; default seeds are 0, 1, 2 ...
    status, answer = server.call("POST", "/v1/generate", json.dumps({"prompts": ["a dog"] * 5}).encode(),
                                 "application/json")
    assert status == 200 and all(entry["uri"] for entry in answer["images"])
    assert [entry["seed"] for entry in answer["images"]] == [0, 1, 2, 3, 4]

    status, answer = server.call("POST", "/v1/generate",
                                 json.dumps({"prompts": ["a dog"], "steps": 3, "height": 64, "width": 32}).encode(),
                                 "application/json")
    assert status == 200
    image = decoded(base64.b64decode(answer["images"][0]["png_base64"]))
    assert image.size == (32, 64)
    want = generator.generate(["a dog"], [0], steps=3, height=64, width=32)[0].image
    assert np.array_equal(np.asarray(image), np.asarray(want))


# --- malformed requests and the token ------------------------------------------------------------

BOMB = bytearray(png((1, 1)))
BOMB[16:24] = (100_000).to_bytes(4, "big") * 2  # a header claiming 100000 x 100000 pixels

MALFORMED = [
    ("POST", "/v1/caption", b"", "image/png", 400),
    ("POST", "/v1/caption", b"this is not an image", "image/png", 422),
    ("POST", "/v1/caption", png()[:60], "image/png", 422),
    ("POST", "/v1/caption", bytes(BOMB), "image/png", 422),
    ("POST", "/v1/caption", b"hello", "text/plain", 415),
    ("POST", "/v1/caption", b"{not json", "application/json", 400),
    ("POST", "/v1/caption", b'{"images": "abc"}', "application/json", 422),
    ("POST", "/v1/caption", b'{"images": []}', "application/json", 422),
    ("POST", "/v1/caption", b'{"image": ["abc"]}', "application/json", 422),
    ("POST", "/v1/caption", b'{"images": ["@@@ not base64 @@@"]}', "application/json", 422),
    ("POST", "/v1/caption", b'{"images": ["L2V0Yy9wYXNzd2Q="]}', "application/json", 422),  # base64 of a path
    ("POST", "/v1/caption", json.dumps({"images": [base64.b64encode(png()).decode()] * 33}).encode(),
     "application/json", 422),
    ("POST", "/v1/caption", b"--x\r\nno separator\r\n--x--", "multipart/form-data; boundary=x", 400),
    ("POST", "/v1/caption", b"junk", "multipart/form-data", 400),
    ("POST", "/v1/caption", multipart([b""])[0], multipart([b""])[1], 422),
    ("POST", "/v1/generate", b"", "application/json", 400),
    ("POST", "/v1/generate", b'{"prompts": ["a"]}', "text/plain", 415),
    ("POST", "/v1/generate", b"[1, 2", "application/json", 400),
    ("POST", "/v1/generate", b'{"prompts": "a dog"}', "application/json", 422),
    ("POST", "/v1/generate", json.dumps({"prompts": ["a dog"] * 17}).encode(), "application/json", 422),
    ("POST", "/v1/generate", b'{"prompts": [""]}', "application/json", 422),
    ("POST", "/v1/generate", json.dumps({"prompts": ["x" * 2001]}).encode(), "application/json", 422),
    ("POST", "/v1/generate", b'{"prompts": ["a", "b"], "seeds": [1]}', "application/json", 422),
    ("POST", "/v1/generate", b'{"prompts": ["a"], "seeds": [-5]}', "application/json", 422),
    ("POST", "/v1/generate", b'{"prompts": ["a"], "steps": 1000000}', "application/json", 422),
    ("POST", "/v1/generate", b'{"prompts": ["a"], "steps": 0}', "application/json", 422),
    ("POST", "/v1/generate", b'{"prompts": ["a"], "height": 100000, "width": 100000}', "application/json", 422),
    ("POST", "/v1/generate", b'{"prompts": ["a"], "width": 33}', "application/json", 422),
    ("POST", "/v1/generate", b'{"prompts": ["a"], "model": "runwayml/stable-diffusion-v1-5"}', "application/json", 422),
    ("POST", "/v1/generate", b'{"prompts": ["a"], "output_uri": "/etc"}', "application/json", 422),
    ("GET", "/v1/caption", None, None, 405),
    ("GET", "/v1/nothing-here", None, None, 404),
    ("GET", "/v2/caption", None, None, 404),
]


def test_every_malformed_request_is_a_4xx_with_a_message(server):
    failures = []
    for method, path, data, content_type, expected in MALFORMED:
        status, body = server.call(method, path, data, content_type)
        message = body.get("detail") if isinstance(body, dict) else None
        if status != expected or not message:
            failures.append((path, (data or b"")[:40], content_type, expected, status, body))
    assert not failures, failures
    status, body = server.call("GET", "/v1/healthz", token=None)
    assert status == 200 and body["status"] == "ok"


def test_request_size_limit_is_413_with_or_without_content_length(server):
    import http.client

    limit = 8 * 1024 * 1024
    status, body = server.call("POST", "/v1/caption", b"\x00" * (limit + 1), "image/png")
    assert status == 413 and str(limit) in body["detail"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(9):
            yield b"\x00" * (1024 * 1024)

    host, port = server.url.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("POST", "/v1/caption", body=chunks(), encode_chunked=True,
                       headers={"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    assert response.status == 413 and b"exceeds" in response.read()
    connection.close()

    # A client announcing a 1 GB upload is answered while it is still sending the first megabytes.
    import select

    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall((f"POST /v1/caption HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                      f"Authorization: Bearer {TOKEN}\r\nContent-Length: {2**30}\r\n\r\n").encode())
        sent, answer = 0, b""
        try:
            while sent < 2**30 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"\x00" * 2**20)
                sent += 2**20
            answer = sock.recv(4096)
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 413"), (sent, answer[:200])
    assert sent < 2**29


def test_bearer_token_guards_the_endpoints(server):
    image = png()
    for token in (None, "wrong-token"):
        for method, path, data, content_type in (("GET", "/v1/models", None, None),
                                                 ("POST", "/v1/caption", image, "image/png"),
                                                 ("POST", "/v1/generate", b'{"prompts": ["a"]}', "application/json")):
            status, body = server.call(method, path, data, content_type, token=token)
            assert status == 401 and body["detail"], (path, token, body)
    status, _ = server.call("GET", "/v1/models", token=None, headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401
    status, _ = server.call("POST", "/v1/caption", image, "image/png")
    assert status == 200


# --- batching --------------------------------------------------------------------------------------


def test_concurrent_requests_are_answered_in_fewer_model_calls(server):
    images = [png(seed=100 + i) for i in range(24)]
    before = server.stats("captioner")
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda data: server.call("POST", "/v1/caption", data, "image/png"), images))
    after = server.stats("captioner")
    assert all(status == 200 for status, _ in answers)
    assert after["items"] - before["items"] == 24
    calls = after["model_calls"] - before["model_calls"]
    assert 1 <= calls < 24, (before, after)
    assert after["largest_batch"] > 1

    before = server.stats("generator")
    bodies = [json.dumps({"prompts": [f"a dog {i}"], "seeds": [i]}).encode() for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda data: server.call("POST", "/v1/generate", data, "application/json"), bodies))
    after = server.stats("generator")
    assert all(status == 200 for status, _ in answers)
    assert after["items"] - before["items"] == 8
    assert after["model_calls"] - before["model_calls"] < 8


# --- the README's curl examples ------------------------------------------------------------------


def test_readme_curl_examples_work(server, tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Serving the models", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines = [line for line in block.strip().splitlines() if not line.startswith("dnd serve")]
    assert sum(line.startswith("curl") for line in lines) >= 6
    port = server.url.rsplit(":", 1)[1]
    # The server of this module wants its token; the README's server (no token variable set) does not.
    script = "\n".join(
        line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        .replace("curl -s ", f"curl -s --fail-with-body -H 'Authorization: Bearer {TOKEN}' ")
        for line in lines
    )
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count('"captions"') == 3
    assert Image.open(tmp_path / "car.png").size == (32, 32)


# --- the engine as a client ----------------------------------------------------------------------


def test_engine_backends_by_handle_and_by_http_match_the_pipeline_backends(server, local_models, monkeypatch):
    from dnd.errors import ConfigError
    from dnd.serve.client import ServeCaptioner, ServeGenerator

    captioner, generator = local_models
    images = [decoded(png(seed=200 + i)) for i in range(5)]
    expected_captions = captioner.caption(images)
    expected_images = generator.generate(PROMPTS, [3, 4])

    monkeypatch.setenv("DND_TEST_CLIENT_TOKEN", TOKEN)
    clients = [
        (ServeCaptioner(app="dnd"), ServeGenerator(app="dnd")),
        (ServeCaptioner(url=server.url, token_env="DND_TEST_CLIENT_TOKEN"),
         ServeGenerator(url=server.url, token_env="DND_TEST_CLIENT_TOKEN")),
    ]
    for remote_captioner, remote_generator in clients:
        assert remote_captioner.cache_key == "serve|" + captioner.cache_key
        assert remote_captioner.caption(images) == expected_captions
        results = remote_generator.generate(PROMPTS, [3, 4])
        for got, want in zip(results, expected_images):
            assert got.refused is None and np.array_equal(np.asarray(got.image), np.asarray(want.image))
    assert ServeCaptioner.cache_identity(app="dnd") == ServeCaptioner.cache_identity(
        url=server.url, token_env="DND_TEST_CLIENT_TOKEN")

    with pytest.raises(ConfigError, match="no deployment 'Captioner' of a Serve application 'elsewhere'"):
        ServeCaptioner(app="elsewhere")
    with pytest.raises(ConfigError, match="401"):
        ServeCaptioner(url=server.url, token_env=None)
    with pytest.raises(ConfigError, match="cannot use the dnd Serve API"):
        ServeGenerator(url=f"http://127.0.0.1:{free_port()}")


def test_a_dissection_with_an_unreachable_api_fails_before_step1(local_ray, tmp_path):
    from dnd.errors import ConfigError
    from dnd.pipeline import dissect

    url = f"http://127.0.0.1:{free_port()}"
    config = smoke_config(tmp_path / "run", captioner={"backend": "serve", "options": {"url": url}})
    logged = []
    with pytest.raises(ConfigError, match="cannot use the dnd Serve API"):
        dissect(config, log=logged.append)
    assert not any("step 1" in line for line in logged)
    # A wrong option is caught on the driver too, against the backend's own signature.
    with pytest.raises(ConfigError, match="generator.options for generator 'serve': unknown option 'model'; "
                                          "its options are app, timeout_s, token_env, url"):
        dissect(smoke_config(tmp_path / "run2", generator={"backend": "serve", "options": {"model": "x"}}),
                log=logged.append)


@pytest.mark.slow
def test_smoke_dissection_through_serve_matches_the_in_pipeline_run(server, smoke_run, tmp_path):
    from dnd.pipeline import dissect

    # The in-pipeline reference is the tier's shared smoke run: the same config but for the backends.
    local, local_out = smoke_run
    before = {family: server.stats(family) for family in ("captioner", "generator")}
    served = dissect(
        smoke_config(tmp_path / "served",
                      captioner={"backend": "serve", "options": {"app": "dnd"}, "num_cpus": 0.1},
                      generator={"backend": "serve", "options": {"app": "dnd"}, "num_cpus": 0.1}),
        log=lambda message: None,
    )
    after = {family: server.stats(family) for family in ("captioner", "generator")}

    # The served run's models ran in the deployments, not in the run.
    manifest = served.manifest
    assert manifest["config"]["captioner"]["backend"] == "serve"
    assert after["captioner"]["items"] - before["captioner"]["items"] == manifest["captions"]["unique_images"] > 0
    # Step 3 generates through the deployment (with method dnd, parsimony's round too).
    generated = manifest["generation"]["images"] + manifest.get("parsimony", {}).get("generation", {}).get("images", 0)
    assert after["generator"]["items"] - before["generator"]["items"] == generated > 0

    # Same captions, candidates, labels and ranks. Generated pixels, and so the CLIP image products
    # and the mean activations on them, may differ in the last bits: batched float kernels round
    # differently for other batch shapes and thread counts, as they do between two in-pipeline runs
    # with different batch sizes.
    columns = ["layer", "neuron", "status", "label", "labels", "candidates", "top_images", "captions"]
    mine = _plain(local.neurons.sort_values(["layer", "neuron"])[columns].to_dict("records"))
    theirs = _plain(served.neurons.sort_values(["layer", "neuron"])[columns].to_dict("records"))
    assert len(mine) == 9 and all(row["status"] == "ok" for row in mine)
    assert _without_products(theirs) == _without_products(mine)
    for row_mine, row_theirs in zip(mine, theirs):
        for a, b in zip(row_mine["candidates"], row_theirs["candidates"]):
            for name in ("image_products", "topk_squared_image_products"):
                # A sub-phrase candidate carries no paper score (README, results schema): None on both sides.
                assert (a["scores"][name] is None) == (b["scores"][name] is None) == a["sub_phrase"], (a, name)
                if a["scores"][name] is not None:
                    assert b["scores"][name] == pytest.approx(a["scores"][name], rel=1e-4, abs=1e-6)
            # Pixels within 1 grey level of each other move a tiny network's activations by ~1e-5.
            assert b["mean_activation"] == pytest.approx(a["mean_activation"], rel=1e-3, abs=1e-4), a["concept"]
    pixels_mine, pixels_theirs = _generated_pixels(local_out), _generated_pixels(tmp_path / "served")
    assert set(pixels_theirs) == set(pixels_mine) and len(pixels_mine) == generated
    for request, image in pixels_mine.items():
        assert np.abs(image - pixels_theirs[request]).max() <= 1, request


def _without_products(rows):
    rows = json.loads(json.dumps(rows))
    for row in rows:
        for candidate in row["candidates"]:
            candidate.pop("score")
            candidate.pop("mean_activation")
            for name in ("image_products", "topk_squared_image_products"):
                candidate["scores"].pop(name)
    return rows


def _generated_pixels(run):
    """(prompt, seed) -> the generated image's pixels, from the run's generation cache."""
    import pyarrow.parquet as pq

    out = {}
    for part in sorted((run / "cache" / "generated").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            if row["data"]:
                out[(row["prompt"], row["seed"])] = np.asarray(decoded(row["data"]), dtype=np.int16)
    return out


def _plain(value):
    """numpy arrays and scalars from Parquet as lists and Python numbers, for exact comparison."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- a replica lost under load (last in the module: it scales the captioner and puts it back) ----


def _replica_actors(state):
    """The captioner's replica actors in ``state`` (ServeReplica:<app>:<deployment> actors), from the
    GCS actor table: Ray's state API (ray.util.state) is served by the dashboard, which this tier's
    local Ray runs without; the table is what that API lists actors from."""
    from ray._private import state as gcs

    return [actor for actor in gcs.actors().values()
            if actor["ActorClassName"] == "ServeReplica:dnd:Captioner" and actor["State"] == state]


def _wait_for(predicate, timeout_s, what):
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s}s"
        time.sleep(0.2)


def _captioner_running(replicas):
    from ray import serve

    app = serve.status().applications.get("dnd")
    overview = app and app.deployments.get("Captioner")
    if not overview:
        return False
    states = {str(getattr(state, "value", state)): count for state, count in overview.replica_states.items()}
    return str(getattr(overview.status, "value", overview.status)) == "HEALTHY" and states == {"RUNNING": replicas}


def _deploy_captioner_replicas(server, replicas):
    """The module's application again, but for the captioner's num_replicas (a lightweight update:
    no replica restarts), waiting until Serve runs exactly that many."""
    import copy

    from dnd.serve.launch import start

    config = copy.deepcopy(server.config)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Captioner":
            deployment["num_replicas"] = replicas
    start(config, log=lambda message: None, timeout_s=300)
    # start() returns once the application reads RUNNING, which it may still do from before the update.
    _wait_for(lambda: _captioner_running(replicas) and len(_replica_actors("ALIVE")) == replicas, 300,
              f"{replicas} captioner replicas running")


def test_a_replica_killed_under_a_dissections_calls_loses_no_caption(server, caplog):
    """SIGKILL one of two captioner replicas while the engine's serve captioner (handle path) has
    calls in flight: the calls on the dead replica are sent again, every image gets its caption."""
    import signal
    import threading

    from dnd.serve.client import ServeCaptioner

    images = [decoded(png((32, 32), seed=500 + i)) for i in range(192)]
    calls = [images[i:i + 12] for i in range(0, len(images), 12)]  # 16 calls, as a Step 2A pool would send
    _deploy_captioner_replicas(server, 2)
    try:
        captioner = ServeCaptioner(app="dnd")
        expected = captioner.caption(images)  # before the kill, on both replicas
        captions = [None] * len(calls)
        errors = []
        first_done = threading.Event()

        def worker(indices):
            for index in indices:
                try:
                    captions[index] = captioner.caption(calls[index])
                except Exception as exc:  # reported by the assertions below
                    errors.append(f"{type(exc).__name__}: {exc}")
                first_done.set()

        # Eight concurrent streams of 12 images keep ~3 batches of 16 queued on each replica, so the kill
        # lands on calls the replica has accepted (Serve itself resends only those not yet accepted).
        threads = [threading.Thread(target=worker, args=(range(k, len(calls), 8),), daemon=True) for k in range(8)]
        with caplog.at_level("WARNING", logger="dnd"):
            for thread in threads:
                thread.start()
            assert first_done.wait(timeout=120), "no caption call finished"
            victim = _replica_actors("ALIVE")[0]
            os.kill(victim["Pid"], signal.SIGKILL)  # a process death, not a graceful ray.kill
            for thread in threads:
                thread.join(timeout=300)
            assert not any(thread.is_alive() for thread in threads), "caption calls still running after 300s"

        assert not errors, errors
        assert [caption for call in captions for caption in call] == expected
        # The calls that died with the replica were retried by the client, and logged once per burst.
        retried = [r.getMessage() for r in caplog.records if r.name == "dnd" and "retrying" in r.getMessage()]
        assert retried and "ActorDiedError" in retried[0], retried
        _wait_for(lambda: victim["ActorID"] not in {a["ActorID"] for a in _replica_actors("ALIVE")}, 60,
                  "the killed replica gone")
        from ray._private import state as gcs

        assert gcs.actors(victim["ActorID"])["State"] == "DEAD"
    finally:
        _deploy_captioner_replicas(server, 1)  # as the module's other tests found it
