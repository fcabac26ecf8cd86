"""dnd — Describe-and-Dissect at the scale of whole networks.

Importing this package is cheap: torch, Ray and the model libraries load only when a run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from dnd.config import RunConfig
    from dnd.results import Results

__all__ = ["dissect", "load_config", "Results", "RunConfig", "__version__"]


def dissect(config: "RunConfig | dict | str", **overrides: Any) -> "Results":
    """Run Describe-and-Dissect for ``config`` (a RunConfig, a dict, or a YAML path) on the current
    Ray cluster (a local one is started when none is running) and return its :class:`Results`."""
    from dnd.pipeline import dissect as _dissect

    return _dissect(config, **overrides)


def load_config(source: Any, overrides: list[str] | None = None) -> "RunConfig":
    from dnd.config import load_config as _load

    return _load(source, overrides or [])


def __getattr__(name: str) -> Any:
    if name == "Results":
        from dnd.results import Results

        return Results
    if name == "RunConfig":
        from dnd.config import RunConfig

        return RunConfig
    raise AttributeError(name)
