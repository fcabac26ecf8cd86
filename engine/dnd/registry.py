"""Name → factory registries for every backend family (target models, captioners, summarizers,
generators, embedders), so that a config string selects a class without if/elif chains."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from dnd.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A family of interchangeable backends, looked up by the name written in a run config."""

    def __init__(self, family: str):
        self.family = family
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            existing = self._factories.get(name)
            if existing is not None and existing is not factory and _origin(existing) != _origin(factory):
                # Two different backends under one name; the same definition re-run (a module
                # reloaded in a notebook or by a test) replaces its older self instead.
                raise ValueError(f"{self.family} backend {name!r} is registered twice "
                                 f"({_origin(existing)} and {_origin(factory)})")
            self._factories[name] = factory
            return factory

        return decorate

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.family} backend {name!r}; expected one of: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **options: Any) -> T:
        return self.get(name)(**options)


def _origin(factory: Callable[..., Any]) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


def build_stage_backend(registry: Registry[Any], stage: Any) -> Any:
    """Create the backend a stage config names, inside the actor (or process) that will use it.

    The stage's ``device`` applies unless the backend's own options name one; ``auto`` resolves to
    the GPU only when the stage asked Ray for one, so CPU actors never grab a visible GPU.
    """
    from dnd.backends import load_backends

    load_backends()
    options = dict(stage.options)
    if "device" not in options and getattr(stage, "device", None) and _accepts(registry.get(stage.backend), "device"):
        device = stage.device
        if device == "auto":
            device = "auto" if getattr(stage, "num_gpus", 0) > 0 else "cpu"
        options["device"] = device
    if getattr(stage, "threads", None) or getattr(stage, "num_gpus", 0) == 0:
        from dnd.models.device import set_cpu_threads

        set_cpu_threads(getattr(stage, "threads", None), getattr(stage, "pool_size", 1))
    return registry.create(stage.backend, **options)


def _accepts(factory: Callable[..., Any], option: str) -> bool:
    import inspect

    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return option in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def backend_identity(registry: Registry[Any], stage: Any) -> str:
    """What identifies a backend's outputs beyond its config and code, for cache keys: "" for a
    backend that computes them itself; for a client of a remote model (the ``serve`` backends), the
    remote model's own identity, from the factory's ``cache_identity(**options)``."""
    from dnd.backends import load_backends

    load_backends()
    identity = getattr(registry.get(stage.backend), "cache_identity", None)
    return str(identity(**stage.options)) if callable(identity) else ""


def options_model(registry: Registry[Any], name: str) -> Any:
    """A pydantic model of backend ``name``'s options, read from its factory's signature: every
    keyword parameter is an option with its annotated type and default. The signature is the one
    declaration; range checks stay in the factory. Other keys are refused, unless the factory sets
    ``accepts_any_options = True`` (it takes ``**options`` and checks them itself)."""
    import inspect
    import typing

    import pydantic

    factory = registry.get(name)
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation only importable under TYPE_CHECKING: check names, not types
        hints = {}
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(factory).parameters.values():
        if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[parameter.name] = (hints.get(parameter.name, Any), default)
    # A backend that passes arbitrary options on (to a model's own config, say) says so.
    extra = "allow" if getattr(factory, "accepts_any_options", False) else "forbid"
    config = pydantic.ConfigDict(extra=extra, strict=True, arbitrary_types_allowed=True)
    return pydantic.create_model(f"{registry.family.title().replace(' ', '')}{name.title()}Options",
                                 __config__=config, **fields)


def check_options(registry: Registry[Any], stage: Any, section: str) -> None:
    """Validate ``stage.options`` for ``stage.backend`` on the driver, before any Ray work: an unknown
    option or a value of the wrong type is one ConfigError naming the option, the backend and the
    valid options (``section`` is where the options sit in the run config, e.g. "captioner")."""
    import pydantic

    from dnd.backends import load_backends

    load_backends()
    model = options_model(registry, stage.backend)
    options = dict(stage.options)
    if "device" not in options and "device" in model.model_fields and getattr(stage, "device", None):
        options["device"] = stage.device
    try:
        model.model_validate(options)
    except pydantic.ValidationError as exc:
        valid = ", ".join(sorted(model.model_fields))
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown option {where!r}")
            else:
                problems.append(f"option {where!r} = {error.get('input')!r}: {error['msg'].lower()}")
        raise ConfigError(
            f"{section}.options for {registry.family} {stage.backend!r}: {'; '.join(problems)}; its options are {valid}"
        ) from None


def preflight_backend(registry: Registry[Any], stage: Any) -> None:
    """Let a backend check what it needs from outside before any model work (the ``serve`` backends:
    that their server answers), via the factory's optional ``preflight(**options)``."""
    check = getattr(registry.get(stage.backend), "preflight", None)
    if callable(check):
        check(**stage.options)


def backend_code_digest(registry: Registry[Any], name: str) -> str:
    """A digest of the source of the module defining backend ``name``: part of cache keys, so that
    changed backend code (a fixed caption clean-up, a new renderer) never serves stale outputs."""
    import hashlib
    import inspect

    from dnd.backends import load_backends

    load_backends()
    factory = registry.get(name)
    try:
        source = inspect.getsource(inspect.getmodule(factory))
    except (OSError, TypeError):
        source = f"{factory.__module__}.{getattr(factory, '__qualname__', '')}"
    return hashlib.sha256(source.encode()).hexdigest()[:16]
