"""The Serve application: ``Captioner`` and ``Generator`` deployments around the pipeline's own
backends, and the ``Api`` ingress with the versioned HTTP API.

``build_app(args)`` is the application builder named by ``import_path: dnd.serve.app:build_app`` in
``deploy/serve.yaml``. The model deployments build their backend exactly as a pipeline actor does
(:func:`dnd.registry.build_stage_backend` on the registry the stage uses), so a caption or an image
from the API is the one the pipeline would have produced for the same model, input and seed (up to the
last-bit rounding of batched float kernels, which depends on batch shape and thread count).

Each model deployment batches dynamically: every image (or prompt) of every concurrent request is
one item of ``@serve.batch``, and items are cut into model calls of up to ``max_batch_size``. Model
calls run one at a time on a dedicated thread, so the replica keeps accepting (and batching) requests
meanwhile. A batch that raises is retried item by item, so one bad input fails only its own request.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route methods' annotations
# (Request, the bearer credentials) as objects, and Serve pickles the routes by value.
import asyncio
import hashlib
import hmac
import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from ray import serve

from dnd.serve.requests import (
    ApiError,
    CaptionJSON,
    GenerateJSON,
    caption_payloads,
    decode_image,
    generate_request,
    read_body,
)
from dnd.serve.settings import (
    CAPTIONER,
    GENERATOR,
    INGRESS,
    AppArgs,
    CaptionerArgs,
    GeneratorArgs,
    parse_args,
)

logger = logging.getLogger("ray.serve")

API_VERSION = "v1"
#: Per-request generator options, offered when the backend's ``generate`` takes them as keywords.
_REQUEST_OPTIONS = ("steps", "height", "width")
#: Consecutive failed model calls after which a replica reports itself unhealthy (Serve restarts it).
_UNHEALTHY_AFTER = 3
#: Tries of a model call whose replica died under it, before the Api answers 503 (see Api._remote).
_REPLICA_ATTEMPTS = 4
#: Option names (or name endings) whose values /v1/models never shows.
_SECRET_NAMES = ("key", "token", "secret", "password", "auth", "authorization", "credentials")


class _Failed:
    """An item whose model call raised even on its own; its request fails, the batch's others do not."""

    def __init__(self, message: str):
        self.message = message


class ModelCallError(RuntimeError):
    """The model raised on a request's input."""


class _ModelReplica:
    """What both model deployments share: building the backend, the model thread, stats, health."""

    family = ""

    def _setup(self, registry: Any, config_class: type, args_class: type, spec: dict) -> None:
        import ray

        from dnd.backends import load_backends
        from dnd.registry import backend_code_digest, build_stage_backend

        load_backends()
        self.spec = args_class.model_validate(spec)
        # Each subclass's @serve.batch method ``_batched`` takes its sizes from the deployment's args.
        self._batched.set_max_batch_size(self.spec.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.spec.batch_wait_timeout_s)
        gpus = len(ray.get_gpu_ids())
        stage = config_class(
            backend=self.spec.backend, options=self.spec.options, device=self.spec.device,
            threads=self.spec.threads, num_gpus=gpus, pool_size=1,
        )
        # One thread runs every model call (and built the model), so calls never overlap and the
        # event loop stays free to accept and batch the next requests.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dnd-{self.family}")
        started = time.time()
        self.backend = self._executor.submit(build_stage_backend, registry, stage).result()
        self._code_digest = backend_code_digest(registry, self.spec.backend)
        self._load_s = round(time.time() - started, 3)
        self._gpus = gpus
        self.stats = {"model_calls": 0, "items": 0, "requests": 0, "largest_batch": 0, "failed_calls": 0}
        self._consecutive_failures = 0
        try:
            self._replica = str(serve.get_replica_context().replica_id.unique_id)
        except Exception:  # outside a replica (unit use)
            self._replica = "local"
        logger.info("dnd %s: %s backend %r ready in %.1fs (cache key %s)", self.family, self.spec.backend,
                    self.spec.options.get("model", ""), self._load_s, self.backend.cache_key)

    async def _model_call(self, fn: Callable[[], list], size: int) -> list:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, fn)
        except Exception:
            self.stats["failed_calls"] += 1
            self._consecutive_failures += 1
            raise
        self._consecutive_failures = 0
        self.stats["model_calls"] += 1
        self.stats["items"] += size
        self.stats["largest_batch"] = max(self.stats["largest_batch"], size)
        if len(results) != size:
            raise RuntimeError(f"the {self.family} returned {len(results)} results for {size} inputs")
        return list(results)

    async def _batch_or_each(self, items: list, call: Callable[[list], list]) -> list:
        """``call(items)`` as one model call; if it raises, each item alone, so that only the
        items that fail on their own fail."""
        try:
            return await self._model_call(lambda: call(items), len(items))
        except Exception as exc:
            if len(items) == 1:
                return [_Failed(f"{type(exc).__name__}: {exc}")]
            logger.warning("dnd %s: a batch of %d failed (%s); retrying its items one by one",
                           self.family, len(items), exc)
        results = []
        for item in items:
            try:
                results.extend(await self._model_call(lambda item=item: call([item]), 1))
            except Exception as exc:
                results.append(_Failed(f"{type(exc).__name__}: {exc}"))
        return results

    @staticmethod
    def _unwrap(results: list) -> list:
        for index, result in enumerate(results):
            if isinstance(result, _Failed):
                raise ModelCallError(f"input {index}: {result.message}")
        return results

    def ping(self) -> str:
        return "ok"

    def check_health(self) -> None:
        """Called by Serve every ``health_check_period_s``; raising makes Serve replace the replica."""
        if getattr(self, "backend", None) is None:
            raise RuntimeError(f"the {self.family} backend is not loaded")
        if self._consecutive_failures >= _UNHEALTHY_AFTER:
            raise RuntimeError(f"the last {self._consecutive_failures} {self.family} model calls failed")

    def describe(self) -> dict:
        """The model behind this deployment, its batching, and this replica's counters."""
        calls = self.stats["model_calls"]
        return {
            "backend": self.spec.backend,
            "options": _shown_options(self.spec.options),
            "cache_key": self.backend.cache_key,
            "code_digest": self._code_digest,
            "device": str(getattr(self.backend, "device", "n/a")),
            "gpus": self._gpus,
            "max_batch_size": self.spec.max_batch_size,
            "batch_wait_timeout_s": self.spec.batch_wait_timeout_s,
            "load_s": self._load_s,
            "replica": self._replica,
            "stats": {**self.stats, "mean_batch_size": round(self.stats["items"] / calls, 3) if calls else None},
        }


def _shown_options(options: dict) -> dict:
    shown = {}
    for name, value in options.items():
        lowered = name.lower()
        secret = any(lowered == word or lowered.endswith("_" + word) for word in _SECRET_NAMES)
        shown[name] = "***" if secret else value
    return shown


# Defaults both deployments share; a Serve config file's deployment entries override them.
_DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 64,
    "health_check_period_s": 10,
    "health_check_timeout_s": 60,
    "ray_actor_options": {"num_cpus": 1},
}


@serve.deployment(name=CAPTIONER, **_DEPLOYMENT_DEFAULTS)
class Captioner(_ModelReplica):
    """Images in, captions out, with any registered captioner backend (``hf``, ``openai-vision``,
    ``synthetic``); ``caption`` takes RGB PIL images, as :class:`dnd.captioning.base.Captioner` does."""

    family = "captioner"

    def __init__(self, spec: dict):
        from dnd.captioning.base import CAPTIONERS
        from dnd.config import CaptionerConfig

        self._setup(CAPTIONERS, CaptionerConfig, CaptionerArgs, spec)

    async def caption(self, images: list) -> list[str]:
        self.stats["requests"] += 1
        results = await asyncio.gather(*(self._batched(image) for image in images))
        return self._unwrap(list(results))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _batched(self, images: list) -> list:
        return await self._batch_or_each(images, self.backend.caption)


@serve.deployment(name=GENERATOR, **_DEPLOYMENT_DEFAULTS)
class Generator(_ModelReplica):
    """(prompt, seed) in, image (or the backend's refusal) out, with any registered generator backend
    (``diffusers``, ``synthetic``); results are :class:`dnd.generation.base.Generated`."""

    family = "generator"

    def __init__(self, spec: dict):
        import inspect

        from dnd.config import GeneratorConfig
        from dnd.generation.base import GENERATORS

        self._setup(GENERATORS, GeneratorConfig, GeneratorArgs, spec)
        parameters = inspect.signature(self.backend.generate).parameters
        self.request_options = [
            name for name in _REQUEST_OPTIONS
            if name in parameters and parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        ]

    async def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None,
                       height: int | None = None, width: int | None = None) -> list:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        overrides = tuple((name, value) for name, value in (("steps", steps), ("height", height), ("width", width))
                          if value is not None)
        unknown = [name for name, _ in overrides if name not in self.request_options]
        if unknown:
            raise ValueError(f"the {self.spec.backend!r} generator takes no per-request {unknown}")
        self.stats["requests"] += 1
        results = await asyncio.gather(
            *(self._batched((prompt, int(seed), overrides)) for prompt, seed in zip(prompts, seeds))
        )
        return self._unwrap(list(results))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _batched(self, items: list) -> list:
        # Requests with different per-request options cannot share a pipeline call: one call per group.
        results: list = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for index, (_, _, overrides) in enumerate(items):
            groups.setdefault(overrides, []).append(index)
        for overrides, indices in groups.items():
            options = dict(overrides)

            def call(group: list, options: dict = options) -> list:
                return self.backend.generate([p for p, _, _ in group], [s for _, s, _ in group], **options)

            for index, result in zip(indices, await self._batch_or_each([items[i] for i in indices], call)):
                results[index] = result
        return results

    def describe(self) -> dict:
        return {**super().describe(), "request_options": self.request_options,
                "size_multiple": int(getattr(self.backend, "size_multiple", 1) or 1)}


# --- the HTTP API ---------------------------------------------------------------------------------


class CaptionResponse(BaseModel):
    captions: list[str] = Field(..., description="One caption per image, in request order.")
    model: str = Field(..., description="The captioner's cache key: backend, model and every output-changing option.")


class GeneratedImage(BaseModel):
    prompt: str
    seed: int
    png_base64: str | None = Field(None, description="The PNG, base64-encoded (when returned inline).")
    uri: str | None = Field(None, description="Where the PNG was written (when returned by URI).")
    refused: str | None = Field(None, description="Why no image was made (safety filter, empty output ...), else null.")


class GenerateResponse(BaseModel):
    images: list[GeneratedImage]
    model: str = Field(..., description="The generator's cache key.")


class HealthResponse(BaseModel):
    status: str = Field(..., description="ok when every deployment answered, else unavailable.")
    deployments: dict[str, str]


_CAPTION_BODY = {
    "required": True,
    "description": "One image as the raw body, any number as multipart/form-data parts, or base64 strings in JSON.",
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "Every part of the form is an image, whatever its field name."}}}},
        "application/json": {"schema": CaptionJSON.model_json_schema()},
    },
}
_GENERATE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": GenerateJSON.model_json_schema(by_alias=True)}},
}

api = FastAPI(
    title="dnd models",
    version=API_VERSION,
    description=(
        "The captioner and the generator of the dnd engine (Describe-and-Dissect) as an HTTP API. Errors are JSON "
        "{\"detail\": message}: 4xx for every malformed request, 401 without the bearer token when one is configured."
    ),
    openapi_url=f"/{API_VERSION}/openapi.json",
    docs_url=f"/{API_VERSION}/docs",
    redoc_url=None,
)
_bearer = HTTPBearer(auto_error=False, description="Required when the server sets its token environment variable.")


async def _awaited(response: Any) -> Any:
    return await response


@api.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)


@serve.deployment(name=INGRESS, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class Api:
    """The HTTP front: checks every request, then calls the model deployments through their handles."""

    def __init__(self, captioner: Any, generator: Any, args: dict):
        self.args = parse_args(args)
        self.limits = self.args.limits
        self.captioner = captioner
        self.generator = generator
        self._token = os.environ.get(self.args.token_env, "") if self.args.token_env else ""
        self._static: dict[str, dict] = {}
        self._output_fs: Any = None
        self._replica_lost = False
        if self.args.token_env and not self._token:
            logger.warning("dnd Api: %s is not set; the endpoints are open", self.args.token_env)

    # -- helpers --

    def _authorize(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if not self._token:
            return
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(credentials.credentials.encode(), self._token.encode()):
            raise ApiError(401, "wrong bearer token")

    def _handle(self, family: str) -> Any:
        handle = self.captioner if family == "captioner" else self.generator
        if handle is None:
            raise ApiError(404, f"this server runs no {family} (its config sets {family}: null)")
        return handle

    async def _remote(self, call: Callable[[], Any], family: str) -> Any:
        """``await call()`` (a model deployment call), sent again when the replica that ran it died.

        Serve routes around a replica it knows is dead, but a request already running on a replica
        when its process dies fails with the replica (ActorDiedError): without this, every request
        in flight there would be a 500 to its HTTP client. Resending is safe: a caption or a
        (prompt, seed) image is the same whichever replica makes it. The router sends the retry to a
        live replica, or holds it until the replacement is up."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import ReplicaUnavailableError

        for attempt in range(1, _REPLICA_ATTEMPTS + 1):
            try:
                result = await call()
            except ModelCallError as exc:
                raise ApiError(500, f"the {family} failed on this request: {exc}") from None
            except (RayActorError, ReplicaUnavailableError) as exc:
                if attempt == _REPLICA_ATTEMPTS:
                    raise ApiError(503, f"the {family} replicas went away under this request {attempt} times "
                                        f"({type(exc).__name__}); retry later") from None
                if not self._replica_lost:  # one line per replica loss, not one per request it failed
                    logger.warning("dnd Api: a %s replica went away under requests (%s); sending them again",
                                   family, type(exc).__name__)
                self._replica_lost = True
                await asyncio.sleep(0.1 * 2 ** (attempt - 1))
                continue
            self._replica_lost = False
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _describe(self, family: str) -> dict:
        """The deployment's description without its counters, fetched once (it does not change)."""
        if family not in self._static:
            info = await self._handle(family).describe.remote()
            info.pop("stats", None)
            info.pop("replica", None)
            self._static[family] = info
        return self._static[family]

    # -- routes --

    @api.get(f"/{API_VERSION}/healthz", response_model=HealthResponse, tags=["status"],
             responses={503: {"model": HealthResponse}})
    async def healthz(self) -> Any:
        """Liveness of every deployment (no token needed): 200 when all answer, else 503."""
        states = {}
        for family, handle in (("captioner", self.captioner), ("generator", self.generator)):
            if handle is None:
                continue
            try:
                states[family] = await asyncio.wait_for(_awaited(handle.ping.remote()), timeout=30)
            except Exception as exc:
                states[family] = f"unavailable: {type(exc).__name__}: {str(exc)[:200]}"
        healthy = all(state == "ok" for state in states.values())
        body = {"status": "ok" if healthy else "unavailable", "deployments": states}
        return JSONResponse(body, status_code=200 if healthy else 503)

    @api.get(f"/{API_VERSION}/models", tags=["status"])
    async def models(self, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> dict:
        """The models served, their batching, the request limits, and the answering replicas' counters
        (``stats``: model calls, items, requests, mean batch size)."""
        self._authorize(credentials)
        out: dict[str, Any] = {"api": API_VERSION, "auth": bool(self._token), "limits": self.limits.model_dump()}
        for family, handle in (("captioner", self.captioner), ("generator", self.generator)):
            out[family] = None if handle is None else await handle.describe.remote()
        if self.args.generator is not None:
            out["generator_output"] = {"uri": self.args.generator.output_uri is not None,
                                       "inline_max_images": self.args.generator.inline_max_images}
        return out

    @api.post(f"/{API_VERSION}/caption", response_model=CaptionResponse, tags=["models"],
              openapi_extra={"requestBody": _CAPTION_BODY})
    async def caption(self, request: Request,
                      credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Any:
        """Caption images: one caption per image, in order."""
        self._authorize(credentials)
        handle = self._handle("captioner")
        body = await read_body(request, self.limits.max_request_bytes)
        payloads = caption_payloads(request.headers.get("content-type"), body, self.limits)
        del body
        images = await asyncio.to_thread(
            lambda: [decode_image(data, f"image {i}", self.limits.max_image_pixels) for i, data in enumerate(payloads)]
        )
        captions = await self._remote(lambda: handle.caption.remote(images), "captioner")
        info = await self._describe("captioner")
        return {"captions": list(captions), "model": info["cache_key"]}

    @api.post(f"/{API_VERSION}/generate", response_model=GenerateResponse, tags=["models"],
              openapi_extra={"requestBody": _GENERATE_BODY})
    async def generate(self, request: Request,
                       credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Any:
        """Generate one image per prompt (PNG, inline or written to the server's object-store prefix)."""
        self._authorize(credentials)
        handle = self._handle("generator")
        body = await read_body(request, self.limits.max_request_bytes)
        info = await self._describe("generator")
        parsed = generate_request(body, request.headers.get("content-type"), self.limits, info)
        settings = self.args.generator
        seeds = parsed.seeds if parsed.seeds is not None else list(range(len(parsed.prompts)))
        mode = parsed.response
        if mode == "auto":
            mode = "uri" if settings.output_uri and len(parsed.prompts) > settings.inline_max_images else "base64"
        if mode == "uri" and not settings.output_uri:
            raise ApiError(422, "'return': 'uri' needs an object-store prefix, and this server has none configured")
        results = await self._remote(
            lambda: handle.generate.remote(parsed.prompts, seeds, parsed.steps, parsed.height, parsed.width),
            "generator",
        )
        request_key = (info["cache_key"], parsed.steps, parsed.height, parsed.width)
        images = await asyncio.to_thread(self._encode_all, parsed.prompts, seeds, results, mode, request_key)
        return {"images": images, "model": info["cache_key"]}

    def _encode_all(self, prompts: list[str], seeds: list[int], results: list, mode: str, request_key: tuple) -> list:
        out = []
        for prompt, seed, result in zip(prompts, seeds, results):
            entry: dict[str, Any] = {"prompt": prompt, "seed": seed, "png_base64": None, "uri": None,
                                     "refused": result.refused if result.image is None else None}
            if result.image is not None:
                buffer = io.BytesIO()
                result.image.convert("RGB").save(buffer, format="PNG")
                data = buffer.getvalue()
                if mode == "uri":
                    entry["uri"] = self._write(data, (*request_key, prompt, seed))
                else:
                    import base64

                    entry["png_base64"] = base64.b64encode(data).decode("ascii")
            out.append(entry)
        return out

    def _write(self, data: bytes, key: tuple) -> str:
        """Write a PNG under the configured prefix, named by what produced it (same request, same name)."""
        import fsspec

        settings = self.args.generator
        if self._output_fs is None:
            self._output_fs, self._output_root = fsspec.core.url_to_fs(settings.output_uri, **settings.storage_options)
            self._output_fs.makedirs(self._output_root, exist_ok=True)
        name = hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".png"
        path = f"{self._output_root.rstrip('/')}/{name}"
        self._output_fs.pipe_file(path, data)
        return f"{settings.output_uri.rstrip('/')}/{name}"


def build_app(args: dict | None = None) -> Any:
    """The application for ``serve run`` / ``serve deploy`` / ``dnd serve`` (``args`` from the config)."""
    from dnd.backends import load_backends
    from dnd.captioning.base import CAPTIONERS
    from dnd.generation.base import GENERATORS

    parsed: AppArgs = parse_args(args)
    load_backends()
    # Unknown backend names fail here, at deploy time, not in a replica.
    captioner = generator = None
    if parsed.captioner is not None:
        _check_model_backend(CAPTIONERS, "captioner", parsed.captioner)
        captioner = Captioner.bind(parsed.captioner.model_dump())
    if parsed.generator is not None:
        _check_model_backend(GENERATORS, "generator", parsed.generator)
        generator = Generator.bind(parsed.generator.model_dump())
    return Api.bind(captioner, generator, parsed.model_dump())


def _check_model_backend(registry: Any, family: str, spec: Any) -> None:
    """An unknown backend, an unknown or mistyped option, or a client of the deployments themselves
    fails at deploy time with one line, not in a replica."""
    from dnd.errors import ConfigError
    from dnd.registry import check_options

    name = spec.backend
    check_options(registry, spec, f"{family}")
    if getattr(registry.get(name), "calls_a_deployment", False):
        raise ConfigError(f"the Serve application's {family} cannot be the client backend {name!r} (it would call "
                          "itself); name a model backend such as hf, diffusers or synthetic")
