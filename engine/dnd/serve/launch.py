"""``dnd serve``: deploy a Serve config file (the format ``serve build`` writes) the way ``serve run``
does, wait until its applications run, and keep them up until interrupted.

Without a file it serves :func:`tiny_config` — ``deploy/serve-tiny.yaml``, the application with the
``random-tiny`` models on CPU — so the README's ``curl`` examples work with no download and no GPU.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Callable

from dnd.errors import ConfigError, DndError
from dnd.serve.settings import CAPTIONER, DEFAULT_APP, DEFAULT_TOKEN_ENV, GENERATOR, INGRESS

IMPORT_PATH = "dnd.serve.app:build_app"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def tiny_config() -> dict:
    """The random-tiny application on CPU, as in ``deploy/serve-tiny.yaml`` (a test keeps them equal).

    The captioner and generator options are those of ``examples/smoke.yaml``, so a dissection with
    ``backend: serve`` gives exactly what the smoke run gives with its own models.
    """
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": DEFAULT_HOST, "port": DEFAULT_PORT},
        "applications": [
            {
                "name": DEFAULT_APP,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": {
                    "captioner": {
                        "backend": "hf",
                        "options": {"model": "random-tiny", "max_new_tokens": 8},
                        "device": "cpu",
                        "threads": 1,
                        "max_batch_size": 16,
                        "batch_wait_timeout_s": 0.05,
                    },
                    "generator": {
                        "backend": "diffusers",
                        "options": {"model": "random-tiny"},
                        "device": "cpu",
                        "threads": 1,
                        "max_batch_size": 8,
                        "batch_wait_timeout_s": 0.05,
                        "output_uri": None,
                        "inline_max_images": 4,
                    },
                    "limits": {
                        "max_request_bytes": 8388608,
                        "max_images": 32,
                        "max_image_pixels": 16777216,
                        "max_prompts": 16,
                        "max_prompt_chars": 2000,
                        "max_steps": 20,
                        "max_side": 256,
                    },
                    "token_env": DEFAULT_TOKEN_ENV,
                },
                "deployments": [
                    {"name": CAPTIONER, "num_replicas": 1, "max_ongoing_requests": 64,
                     "ray_actor_options": {"num_cpus": 0.1, "num_gpus": 0}},
                    {"name": GENERATOR, "num_replicas": 1, "max_ongoing_requests": 32,
                     "ray_actor_options": {"num_cpus": 0.1, "num_gpus": 0}},
                    {"name": INGRESS, "num_replicas": 1, "max_ongoing_requests": 256,
                     "ray_actor_options": {"num_cpus": 0.1}},
                ],
            }
        ],
    }


def load_deploy_config(source: str | Path | dict | None = None, host: str | None = None,
                       port: int | None = None) -> dict:
    """A checked Serve config: ``source`` is a YAML path, a dict, or None for :func:`tiny_config`;
    ``host``/``port`` replace its ``http_options``. dnd applications' ``args`` are checked too."""
    import yaml

    if source is None:
        config = tiny_config()
    elif isinstance(source, dict):
        config = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"Serve config {str(source)!r} does not exist")
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"Serve config {str(source)!r} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"Serve config {str(source)!r} must be a mapping (the format `serve build` writes)")
    http = dict(config.get("http_options") or {})
    http.setdefault("host", DEFAULT_HOST)
    http.setdefault("port", DEFAULT_PORT)
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    config["http_options"] = http
    check_deploy_config(config)
    return config


def check_deploy_config(config: dict) -> None:
    """Serve's own schema, then, for every application built by dnd, its args (backends, limits)."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        schema = ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise ConfigError(f"not a valid Serve config: {problems}") from None
    for app in schema.applications:
        if app.import_path == IMPORT_PATH:
            from dnd.serve.app import build_app

            build_app(app.args)  # binds the deployments only: no model is loaded here


def start(config: dict, log: Callable[[str], None] = print, timeout_s: float = 900, address: str | None = None) -> list[str]:
    """Deploy ``config`` (a checked Serve config) on the current Ray cluster — joining one at
    ``address`` / ``RAY_ADDRESS`` / ``ray start``, else starting a local one — and wait until its
    applications run. Returns their names."""
    from ray.serve._private import api as private_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    init_ray(address)
    schema = ServeDeploySchema.model_validate(config)
    # What `serve run CONFIG` does: start Serve with the file's HTTP options, then apply the file.
    client = private_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        global_logging_config=schema.logging_config,
    )
    client.deploy_apps(schema, _blocking=False)
    names = [app.name for app in schema.applications]
    wait_running(names, timeout_s, log)
    return names


def init_ray(address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    else:
        from dnd.ray_address import refuse_dead_recorded_head

        refuse_dead_recorded_head()  # as for a dissection: never join a dead recorded head silently
        # As for a dissection: a local cluster's workers import this very package and share the
        # offline setting. Environment variables (the bearer token's included) reach the replicas.
        engine_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(filter(None, [engine_dir, os.environ.get("PYTHONPATH", "")]))
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)


def wait_running(names: list[str], timeout_s: float, log: Callable[[str], None] = print) -> None:
    """Block until every named application is RUNNING; a failed deployment raises with Serve's reason."""
    from ray import serve

    deadline = time.time() + timeout_s
    last = ""
    while True:
        status = serve.status()
        states = {name: status.applications.get(name) for name in names}
        failed = {name: app for name, app in states.items() if app is not None and app.status == "DEPLOY_FAILED"}
        if failed:
            name, app = next(iter(failed.items()))
            reasons = [app.message] + [f"{d}: {s.message}" for d, s in app.deployments.items() if s.message]
            raise DndError(f"Serve application {name!r} failed to deploy: " + " | ".join(r for r in reasons if r))
        if all(app is not None and app.status == "RUNNING" for app in states.values()):
            return
        summary = ", ".join(f"{name}: {app.status if app else 'NOT_STARTED'}" for name, app in states.items())
        if summary != last:
            log(f"waiting for Serve: {summary}")
            last = summary
        if time.time() > deadline:
            raise DndError(f"Serve applications not running after {timeout_s:.0f}s ({summary})")
        time.sleep(0.5)


def serve_forever(config: dict, log: Callable[[str], None] = print, detach: bool = False) -> int:
    """``dnd serve``: deploy, print where, and (unless ``detach``) keep serving until Ctrl-C."""
    from ray import serve

    if detach and not (os.environ.get("RAY_ADDRESS")):
        address = "auto"  # a running cluster (ray start), never one that would die with this process
    else:
        address = None
    try:
        names = start(config, log=log, address=address)
    except ConnectionError as exc:
        raise DndError(f"--detach needs a running Ray cluster (ray start --head, or RAY_ADDRESS): {exc}") from None
    http = config["http_options"]
    base = f"http://{http['host']}:{http['port']}"
    for app in config["applications"]:
        prefix = (app.get("route_prefix") or "/").rstrip("/")
        log(f"dnd serve: application {app['name']!r} at {base}{prefix}/v1 "
            f"(OpenAPI {base}{prefix}/v1/openapi.json)")
    if detach:
        log("dnd serve: deployed; it keeps running on the cluster (serve shutdown stops it)")
        return 0
    log("dnd serve: Ctrl-C (or SIGTERM) stops serving")
    import signal

    def _stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        log("dnd serve: shutting down")
        for name in names:
            serve.delete(name)
        serve.shutdown()
    return 0
