"""The arguments of the Serve application (the ``args:`` of ``deploy/serve.yaml``).

Which backend and model each deployment wraps, how it batches, and the request limits of the HTTP
API. Resources, replicas and autoscaling are *not* here: they are ordinary Serve deployment options
(the ``deployments:`` list of the same file), so ``serve run``, ``serve deploy`` and ``dnd serve``
all read them the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dnd.errors import ConfigError

#: Deployment names, as they appear in a Serve config's ``deployments:`` list and in handles.
CAPTIONER = "Captioner"
GENERATOR = "Generator"
INGRESS = "Api"
#: The application name used when a config does not say.
DEFAULT_APP = "dnd"
#: The environment variable holding the bearer token, unless ``token_env`` names another.
DEFAULT_TOKEN_ENV = "DND_SERVE_TOKEN"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelDeploymentArgs(_Args):
    """One model deployment: a registered backend (the same ones the pipeline uses) and its batching."""

    backend: str = Field(..., description="Registered backend name, as in a run config's captioner/generator section.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the backend (model, dtype ...).")
    device: str = Field("auto", description="torch device; auto = cuda when the replica was given a GPU, else cpu.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads of a replica; null = the node's CPUs.")
    max_batch_size: int = Field(16, ge=1, le=4096, description="Most items (images or prompts) in one model call.")
    batch_wait_timeout_s: float = Field(
        0.02, ge=0, le=60, description="How long a model call waits for more items before starting with fewer."
    )


class CaptionerArgs(ModelDeploymentArgs):
    backend: str = "hf"


class GeneratorArgs(ModelDeploymentArgs):
    backend: str = "diffusers"
    max_batch_size: int = Field(8, ge=1, le=4096, description="Most prompts in one model call.")
    output_uri: str | None = Field(
        None,
        description=(
            "Object-store prefix (s3://bucket/prefix, gs://..., or a local folder) where images are written when a "
            "request asks for URIs or has more than inline_max_images prompts; null = images are always inline."
        ),
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for output_uri.")
    inline_max_images: int = Field(
        4, ge=0, description="Requests with more prompts than this get URIs instead of inline PNGs (when output_uri is set)."
    )


class Limits(_Args):
    """What one HTTP request may ask for; anything beyond is answered 413 or 422, never attempted."""

    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest request body (413 beyond).")
    max_images: int = Field(32, ge=1, description="Most images in one /v1/caption request (422 beyond).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest image, width x height, read from its header before decoding (422 beyond)."
    )
    max_prompts: int = Field(16, ge=1, description="Most prompts in one /v1/generate request (422 beyond).")
    max_prompt_chars: int = Field(2000, ge=1, description="Longest prompt (422 beyond).")
    max_steps: int = Field(150, ge=1, description="Largest denoising step count a request may ask for.")
    max_side: int = Field(2048, ge=8, description="Largest image height or width a request may ask for.")


class AppArgs(_Args):
    """Everything ``dnd.serve.app:build_app`` reads from a Serve config's ``args:``."""

    captioner: CaptionerArgs | None = Field(default_factory=CaptionerArgs, description="null: no /v1/caption.")
    generator: GeneratorArgs | None = Field(default_factory=GeneratorArgs, description="null: no /v1/generate.")
    limits: Limits = Field(default_factory=Limits)
    token_env: str | None = Field(
        DEFAULT_TOKEN_ENV,
        description=(
            "Environment variable (of the Api replicas) holding a bearer token; when it is set and non-empty every "
            "endpoint but /v1/healthz and the OpenAPI document requires 'Authorization: Bearer <token>'."
        ),
    )


def parse_args(args: Any) -> AppArgs:
    """Validated application arguments, or a ConfigError naming each bad key."""
    if args is None:
        args = {}
    if isinstance(args, AppArgs):
        return args
    if not isinstance(args, dict):
        raise ConfigError(f"the dnd Serve application's args must be a mapping, got {type(args).__name__}")
    try:
        return AppArgs.model_validate(args)
    except ValidationError as exc:
        lines = ["invalid dnd Serve application args:"]
        for problem in exc.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
            if problem["type"] == "extra_forbidden":
                lines.append(f"  {where}: unknown key")
            else:
                lines.append(f"  {where}: {problem['msg']} (got {problem.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None
