"""What every analysis reads from a run: its neurons of one layer, its config, where plots go."""

from __future__ import annotations

from typing import Any

from dnd.errors import ConfigError


def layer_rows(results: Any, layer: str | None) -> tuple[str, Any]:
    """(layer, rows) of a run's labelled neurons in ``layer`` (default: the run's only or last layer)."""
    frame = results.neurons
    layers = list(dict.fromkeys(frame["layer"]))
    if layer is None:
        if not layers:
            raise ConfigError(f"run {results.uri!r} has no neurons")
        layer = layers[-1]
    if layer not in layers:
        raise ConfigError(f"run {results.uri!r} has no layer {layer!r}; its layers are {layers}")
    rows = frame[(frame["layer"] == layer) & frame["label"].notna()].sort_values("neuron")
    if rows.empty:
        raise ConfigError(f"layer {layer!r} of run {results.uri!r} has no labelled neurons")
    return layer, rows


def run_config(results: Any) -> dict:
    return results.manifest.get("config") or {}


def plot_uri(results: Any, plot: str | None, name: str) -> str:
    """Where an analysis writes its chart: ``plot`` if given, else ``<run>/analysis/<name>.png``."""
    from dnd.store.fs import join

    return plot or join(results.uri, "analysis", f"{name}.png")


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
