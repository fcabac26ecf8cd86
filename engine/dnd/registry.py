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
            if name in self._factories and self._factories[name] is not factory:
                raise ValueError(f"{self.family} backend {name!r} is registered twice")
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
