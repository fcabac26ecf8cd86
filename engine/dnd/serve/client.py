"""The ``serve`` captioner and generator backends: the engine as a client of the running deployments.

With ``captioner: {backend: serve}`` or ``generator: {backend: serve}`` in a run config, Step 2A and
Step 3 send their images and prompts to the ``Captioner`` and ``Generator`` deployments of a running
dnd Serve application instead of loading models of their own:

* without ``url`` the deployments must run in the same Ray cluster as the dissection, and are called
  through deployment handles (``app`` names the Serve application, ``dnd`` by default);
* with ``url`` (``http://host:8000``) they are called over the HTTP API from anywhere, with the
  bearer token from the environment variable ``token_env`` when it is set.

The deployments wrap the very backends the pipeline would have built and batch the requests of every
client together: the captions and images are the pipeline's for the same inputs and seeds, up to the
last-bit rounding of batched float kernels (which varies with batch shape and thread count). The
pipeline's caches key their outputs by the remote model's own cache key (:meth:`ServeCaptioner.cache_identity`).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Callable

from dnd.captioning.base import CAPTIONERS
from dnd.errors import ConfigError, DndError
from dnd.generation.base import GENERATORS, Generated
from dnd.serve.settings import CAPTIONER, DEFAULT_APP, DEFAULT_TOKEN_ENV, GENERATOR

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

logger = logging.getLogger("dnd")

_DEPLOYMENTS = {"captioner": CAPTIONER, "generator": GENERATOR}

# Retries. A replica that dies mid-request (a crash, an OOM kill, a node lost) fails the requests it
# was running; Serve replaces it, and the deployment's other replicas (or the replacement, which the
# router waits for) answer the same request again. Retrying is safe because captioning and generation
# are idempotent: the same images, or the same prompts and seeds, give the same captions and images,
# and nothing is written server-side except content-named files (the same request, the same name).
#: Tries per call, the first included. Each waits for a free replica, so a few are enough.
_ATTEMPTS = 5
#: Backoff before the second try, doubled before each next one (with jitter) up to _BACKOFF_MAX_S.
_BACKOFF_S = 0.25
_BACKOFF_MAX_S = 2.0
#: HTTP statuses that mean "the proxy or a replica went away or is restarting". A 500 is one too: the
#: Api resends a call whose model replica died (app.py, Api._remote), but a request whose Api replica
#: itself died, or an older server, still answers 500 (see _retryable_http).
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: The Api's own 500 for an input the model fails on (app.py, Api._remote): deterministic, not retried.
_MODEL_FAILED = "failed on this request"


def _check_options(app: Any, url: Any, token_env: Any, timeout_s: Any) -> None:
    if not isinstance(app, str) or not app:
        raise ConfigError(f"app must name a Serve application, got {app!r}")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise ConfigError(f"url must be an http:// or https:// address of a dnd Serve API (or null), got {url!r}")
    if token_env is not None and (not isinstance(token_env, str) or not token_env):
        raise ConfigError(f"token_env must name an environment variable (or be null), got {token_env!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ConfigError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")


def connect(family: str, app: str = DEFAULT_APP, url: str | None = None,
            token_env: str | None = DEFAULT_TOKEN_ENV, timeout_s: float = 600.0) -> "_Remote":
    """A connection to the ``family`` ("captioner" or "generator") deployment: by handle, or by HTTP
    when ``url`` is given. Fails with a ConfigError when the deployment cannot be reached."""
    _check_options(app, url, token_env, timeout_s)
    if url is None:
        return _HandleRemote(family, app, float(timeout_s))
    return _HttpRemote(family, url, token_env, float(timeout_s))


class _Remote:
    family: str
    info: dict
    timeout_s: float

    def identity(self) -> str:
        return f"{self.info['backend']}|{self.info['code_digest']}|{self.info['cache_key']}"

    def _retrying(self, what: str, call: Callable[[float], Any], retryable: Callable[[Exception], bool],
                  describe: Callable[[Exception], str]) -> Any:
        """``call(timeout)`` until it succeeds, retrying the failures ``retryable`` accepts with
        backoff, at most _ATTEMPTS tries and timeout_s seconds in all; then one DndError naming
        ``what``, ``describe(last failure)`` and the tries. Other failures propagate at once."""
        deadline = time.monotonic() + self.timeout_s
        delay = _BACKOFF_S
        for attempt in range(1, _ATTEMPTS + 1):
            remaining = deadline - time.monotonic()
            try:
                result = call(max(remaining, 0.001))
            except Exception as exc:
                if not retryable(exc):
                    raise
                pause = min(delay, _BACKOFF_MAX_S) * (0.5 + random.random() / 2)
                if attempt == _ATTEMPTS or time.monotonic() + pause >= deadline:
                    self._burst_over()
                    elapsed = self.timeout_s - (deadline - time.monotonic())
                    raise DndError(f"{what} failed after {attempt} attempt{'s' if attempt > 1 else ''} in "
                                   f"{elapsed:.1f}s: {describe(exc)}") from None
                self._note_retry(what, describe(exc))
                time.sleep(pause)
                delay *= 2
                continue
            self._burst_over()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    # One warning per burst of failures, not one per request: a replica loss fails every request that
    # was in flight on it at once, and a dissection sends many in parallel through one client.
    _burst_lock = threading.Lock()

    def _note_retry(self, what: str, reason: str) -> None:
        with self._burst_lock:
            retries = getattr(self, "_burst_retries", 0)
            self._burst_retries = retries + 1
        if retries == 0:
            logger.warning("serve %s: %s failed (%s); retrying (up to %d attempts, %.0fs): the requests are "
                           "idempotent", self.family, what, reason, _ATTEMPTS, self.timeout_s)

    def _burst_over(self) -> None:
        with self._burst_lock:
            retries = getattr(self, "_burst_retries", 0)
            self._burst_retries = 0
        if retries:
            logger.warning("serve %s: answering again after %d retr%s", self.family, retries,
                           "y" if retries == 1 else "ies")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _replica_gone(exc: Exception) -> bool:
    """A handle call failed because its replica died or cannot be reached (not because of its input)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import ReplicaUnavailableError

    # RayActorError covers ActorDiedError (the replica's process died under the request: what Ray 2.60's
    # DeploymentResponse.result raises then) and ActorUnavailableError (unreachable for now).
    return isinstance(exc, (RayActorError, ReplicaUnavailableError))


class _HandleRemote(_Remote):
    """Calls inside the Ray cluster: a deployment handle, Python objects in and out."""

    def __init__(self, family: str, app: str, timeout_s: float):
        self.family = family
        self.timeout_s = timeout_s
        deployment = _DEPLOYMENTS[family]
        self.where = f"deployment {deployment!r} of Serve application {app!r}"
        try:
            import ray
            from ray import serve

            if not ray.is_initialized():
                raise RuntimeError("Ray is not initialized in this process")
            self.handle = serve.get_deployment_handle(deployment, app_name=app)
            self.info = self.handle.describe.remote().result(timeout_s=timeout_s)
        except Exception as exc:
            raise ConfigError(
                f"the serve {family} found no deployment {deployment!r} of a Serve application {app!r} in this Ray "
                f"cluster ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                f"start one in the same cluster (dnd serve CONFIG), or set the {family}'s options.url to call a "
                f"dnd Serve API over HTTP"
            ) from None

    def _call(self, method: str, *args: Any) -> Any:
        def once(timeout: float) -> Any:
            return getattr(self.handle, method).remote(*args).result(timeout_s=timeout)

        return self._retrying(f"{method} on the {self.where}", once, _replica_gone, _first_line)

    def caption(self, images: list) -> list[str]:
        return list(self._call("caption", list(images)))

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Generated]:
        return list(self._call("generate", list(prompts), [int(s) for s in seeds]))


class _HttpStatus(Exception):
    """An HTTP error answer, kept with its status and the server's detail for the final message."""

    def __init__(self, code: int, detail: str):
        super().__init__(f"HTTP {code}: {detail}")
        self.code = code
        self.detail = detail


def _retryable_http(exc: Exception) -> bool:
    if isinstance(exc, _HttpStatus):
        return exc.code in _RETRY_STATUSES and _MODEL_FAILED not in exc.detail
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    # Refused (the proxy is restarting), reset or closed without an answer (the process serving the
    # connection died). Timeouts are not retried: the deadline is timeout_s for the whole call.
    return isinstance(exc, (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine,
                            http.client.IncompleteRead))


def _describe_http(exc: Exception) -> str:
    if isinstance(exc, _HttpStatus):
        return str(exc)
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return _first_line(reason) if isinstance(reason, BaseException) else str(reason)


class _HttpRemote(_Remote):
    """Calls from anywhere: the versioned HTTP API, JSON with base64 PNGs both ways."""

    def __init__(self, family: str, url: str, token_env: str | None, timeout_s: float):
        self.family = family
        self.base = url.rstrip("/")
        self.timeout_s = timeout_s
        token = os.environ.get(token_env, "") if token_env else ""
        self.headers = {"Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        try:
            models = self._call("GET", "/v1/models")
        except DndError as exc:
            raise ConfigError(f"the serve {family} cannot use the dnd Serve API at {url}: {exc}") from None
        if not isinstance(models, dict) or models.get(family) is None:
            raise ConfigError(f"the dnd Serve API at {url} runs no {family}")
        self.info = models[family]
        self.limits = models["limits"]

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = self.base + path

        def once(timeout: float) -> Any:
            request = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                raise _HttpStatus(exc.code, _detail(exc)) from None

        try:
            return self._retrying(f"{method} {url}", once, _retryable_http, _describe_http)
        except _HttpStatus as exc:  # not retried: a client error (4xx) or the model failing on this input
            raise DndError(f"{method} {url} answered HTTP {exc.code}: {exc.detail}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise DndError(f"{method} {url} failed: {_describe_http(exc)}") from None

    def caption(self, images: list) -> list[str]:
        captions: list[str] = []
        for chunk in _chunks([_png_base64(image) for image in images], self.limits["max_images"],
                             int(self.limits["max_request_bytes"] * 0.9)):
            answer = self._call("POST", "/v1/caption", {"images": chunk})
            captions.extend(answer["captions"])
        return captions

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Generated]:
        results: list[Generated] = []
        step = int(self.limits["max_prompts"])
        for start in range(0, len(prompts), step):
            answer = self._call("POST", "/v1/generate", {
                "prompts": list(prompts[start : start + step]),
                "seeds": [int(s) for s in seeds[start : start + step]],
                "return": "base64",
            })
            for entry in answer["images"]:
                if entry.get("png_base64"):
                    from dnd.probe.decode import decode_rgb

                    results.append(Generated(decode_rgb(base64.b64decode(entry["png_base64"]))))
                else:
                    results.append(Generated(None, refused=entry.get("refused") or "no image returned"))
        return results


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read()
        return str(json.loads(body).get("detail", body[:300]))
    except Exception:
        return exc.reason if isinstance(exc.reason, str) else str(exc)


def _png_base64(image: "Image.Image") -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _chunks(items: list[str], max_count: int, max_bytes: int) -> list[list[str]]:
    """Consecutive runs of at most ``max_count`` items and (unless one item alone is larger) ``max_bytes``."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for item in items:
        if current and (len(current) >= max_count or size + len(item) + 4 > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += len(item) + 4
    if current:
        chunks.append(current)
    return chunks


def _preflight(family: str, options: dict) -> None:
    import sys

    unknown = set(options) - {"app", "url", "token_env", "timeout_s"}
    if unknown:
        raise ConfigError(f"the serve {family} takes the options app, url, token_env and timeout_s; "
                          f"unknown: {', '.join(sorted(unknown))}")
    ray = sys.modules.get("ray")
    if options.get("url") is not None or (ray is not None and ray.is_initialized()):
        connect(family, **options)


@CAPTIONERS.register("serve")
class ServeCaptioner:
    """Captions from the ``Captioner`` deployment of a running dnd Serve application."""

    #: Marks a client backend: a Serve application cannot be built around it (it would call itself).
    calls_a_deployment = True

    def __init__(self, app: str = DEFAULT_APP, url: str | None = None,
                 token_env: str | None = DEFAULT_TOKEN_ENV, timeout_s: float = 600.0):
        self._remote = connect("captioner", app, url, token_env, timeout_s)
        self.cache_key = "serve|" + self._remote.info["cache_key"]

    @classmethod
    def cache_identity(cls, **options: Any) -> str:
        """The remote model's identity (backend, its code digest, its cache key), for the stage's
        cache keys: a redeployed model with other weights or options never reuses old captions."""
        return connect("captioner", **options).identity()

    @classmethod
    def preflight(cls, **options: Any) -> None:
        """Before Step 1: the API at ``url`` must answer (handles are checked once Ray runs)."""
        _preflight("captioner", options)

    def caption(self, images: "list[Image.Image]") -> list[str]:
        if not images:
            return []
        return self._remote.caption(images)


@GENERATORS.register("serve")
class ServeGenerator:
    """Images from the ``Generator`` deployment of a running dnd Serve application."""

    calls_a_deployment = True

    def __init__(self, app: str = DEFAULT_APP, url: str | None = None,
                 token_env: str | None = DEFAULT_TOKEN_ENV, timeout_s: float = 600.0):
        self._remote = connect("generator", app, url, token_env, timeout_s)
        self.cache_key = "serve|" + self._remote.info["cache_key"]

    @classmethod
    def cache_identity(cls, **options: Any) -> str:
        return connect("generator", **options).identity()

    @classmethod
    def preflight(cls, **options: Any) -> None:
        _preflight("generator", options)

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Generated]:
        if len(prompts) != len(seeds):
            raise DndError(f"generate needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
        if not prompts:
            return []
        return self._remote.generate(prompts, seeds)
