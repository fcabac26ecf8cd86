"""The serve backends' retries (no Ray cluster): a replica that goes away mid-request is retried with
backoff, within a bounded number of attempts; a client error is not retried; an exhausted retry is one
DndError naming the address, the status and the attempts. The HTTP path talks to a real HTTP server on
127.0.0.1 that fails on cue; the handle path to a stand-in handle that raises Ray's replica-death error."""

import json
import logging
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from dnd.errors import DndError
from dnd.serve import client
from dnd.serve.client import ServeCaptioner, ServeGenerator

INFO = {"backend": "hf", "code_digest": "abc", "cache_key": "hf|random-tiny"}
LIMITS = {"max_images": 32, "max_request_bytes": 8 * 1024 * 1024, "max_prompts": 16}


class Script:
    """What the server answers to each POST, in order: an HTTP status, "drop" (close the connection
    without answering, as a dying process does) or "ok"; the last entry repeats."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.posts = 0
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            step = self.steps[min(self.posts, len(self.steps) - 1)]
            self.posts += 1
            return step


@pytest.fixture
def api():
    """(url, set_script): a tiny stand-in of the dnd Serve API whose POST answers follow a Script."""
    state = {"script": Script("ok")}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output clean
            pass

        def _json(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/models":
                self._json(200, {"captioner": INFO, "generator": INFO, "limits": LIMITS})
            else:
                self._json(404, {"detail": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            step = state["script"].next()
            if step == "drop":
                # An abortive close (RST), as when the process holding the connection is killed.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            if step == "model-failed":
                self._json(500, {"detail": "the captioner failed on this request: input 0: ValueError: bad"})
            elif step != "ok":
                self._json(step, {"detail": f"scripted {step}"})
            elif self.path == "/v1/caption":
                self._json(200, {"captions": [f"caption {i}" for i in range(len(body["images"]))], "model": "m"})
            else:
                self._json(200, {"images": [{"prompt": p, "seed": s, "png_base64": None, "refused": "scripted"}
                                            for p, s in zip(body["prompts"], body["seeds"])], "model": "m"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def use(*steps):
        state["script"] = Script(*steps)
        return state["script"]

    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", use
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    # The policy (attempts, doubling) stays; only the pauses shrink, so the tests take milliseconds.
    monkeypatch.setattr(client, "_BACKOFF_S", 0.01)
    monkeypatch.setattr(client, "_BACKOFF_MAX_S", 0.02)


IMAGES = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(3)]


@pytest.mark.parametrize("failures", [[503], [502, 504], ["drop"], [500, "drop", 503]])
def test_a_replica_going_away_is_retried_until_the_good_answer(api, failures, caplog):
    url, use = api
    captioner = ServeCaptioner(url=url, token_env=None)
    script = use(*failures, "ok")
    with caplog.at_level(logging.WARNING, logger="dnd"):
        assert captioner.caption(IMAGES) == ["caption 0", "caption 1", "caption 2"]
    assert script.posts == len(failures) + 1
    # One warning when the burst starts and one when it is over, however many tries it took.
    warnings = [r.getMessage() for r in caplog.records if r.name == "dnd"]
    assert len(warnings) == 2, warnings
    assert "retrying" in warnings[0] and "idempotent" in warnings[0]
    assert f"after {len(failures)} retr" in warnings[1]


def test_the_generator_retries_too(api):
    url, use = api
    generator = ServeGenerator(url=url, token_env=None)
    script = use(503, "ok")
    results = generator.generate(["a dog", "a cat"], [1, 2])
    assert [r.refused for r in results] == ["scripted", "scripted"]
    assert script.posts == 2


@pytest.mark.parametrize("status", [400, 401, 413, 422])
def test_a_client_error_is_not_retried(api, status):
    url, use = api
    captioner = ServeCaptioner(url=url, token_env=None)
    script = use(status, "ok")
    with pytest.raises(DndError, match=rf"^POST {url}/v1/caption answered HTTP {status}: scripted {status}$"):
        captioner.caption(IMAGES)
    assert script.posts == 1


def test_the_models_own_failure_on_an_input_is_not_retried(api):
    url, use = api
    captioner = ServeCaptioner(url=url, token_env=None)
    script = use("model-failed", "ok")
    with pytest.raises(DndError, match="answered HTTP 500: the captioner failed on this request"):
        captioner.caption(IMAGES)
    assert script.posts == 1


def test_a_permanent_503_gives_up_after_the_bounded_attempts(api):
    url, use = api
    captioner = ServeCaptioner(url=url, token_env=None)
    script = use(503)
    with pytest.raises(DndError) as info:
        captioner.caption(IMAGES)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"POST {url}/v1/caption failed after {client._ATTEMPTS} attempts in ")
    assert message.endswith("HTTP 503: scripted 503")
    assert script.posts == client._ATTEMPTS


def test_the_deadline_bounds_the_retries(api, monkeypatch):
    url, use = api
    captioner = ServeCaptioner(url=url, token_env=None, timeout_s=0.3)
    monkeypatch.setattr(client, "_BACKOFF_S", 0.2)
    monkeypatch.setattr(client, "_BACKOFF_MAX_S", 0.2)
    script = use(503)
    with pytest.raises(DndError, match=r"failed after \d attempts? in 0\.\ds: HTTP 503") as info:
        captioner.caption(IMAGES)
    # Pauses of 0.1-0.2 s (jittered) leave room for 2 or 3 tries within 0.3 s, never for all 5.
    assert 2 <= script.posts < client._ATTEMPTS
    assert f"after {script.posts} attempts" in str(info.value)


def test_nothing_listening_fails_with_one_line_after_the_attempts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DndError, match=rf"cannot use the dnd Serve API at http://127.0.0.1:{port}: GET "
                                       rf".*failed after {client._ATTEMPTS} attempts in .*Connection ?refused"):
        ServeCaptioner(url=f"http://127.0.0.1:{port}", token_env=None)


# --- the handle path -------------------------------------------------------------------------------


class FakeResponse:
    def __init__(self, outcome):
        self.outcome = outcome

    def result(self, timeout_s=None):
        assert timeout_s is not None and timeout_s > 0
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class FakeHandle:
    """A deployment handle whose ``caption`` calls give the scripted outcomes in order."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = 0
        handle = self

        class Method:
            def remote(self, images):
                outcome = handle.outcomes[min(handle.calls, len(handle.outcomes) - 1)]
                handle.calls += 1
                return FakeResponse(outcome if isinstance(outcome, Exception) else [outcome] * len(images))

        self.caption = Method()


def handle_remote(handle):
    remote = object.__new__(client._HandleRemote)
    remote.family, remote.timeout_s, remote.handle = "captioner", 30.0, handle
    remote.where = "deployment 'Captioner' of Serve application 'dnd'"
    return remote


def test_handle_calls_retry_a_dead_replica_and_not_a_bad_input():
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    handle = FakeHandle(ActorDiedError(), ActorUnavailableError("unreachable", None), "a caption")
    assert handle_remote(handle).caption(IMAGES[:2]) == ["a caption", "a caption"]
    assert handle.calls == 3

    handle = FakeHandle(ValueError("input 0: the model failed"), "a caption")
    with pytest.raises(ValueError, match="the model failed"):
        handle_remote(handle).caption(IMAGES[:1])
    assert handle.calls == 1

    handle = FakeHandle(ActorDiedError())
    with pytest.raises(DndError, match=rf"^caption on the deployment 'Captioner' of Serve application 'dnd' failed "
                                       rf"after {client._ATTEMPTS} attempts in .*: ActorDiedError: "):
        handle_remote(handle).caption(IMAGES[:1])
    assert handle.calls == client._ATTEMPTS
