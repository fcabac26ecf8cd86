"""Concept vectors: how present each explanation is in each probe image, from a registered source.

A source is named in a run's ``faithfulness.concepts`` (or ``dnd score --concepts``) as ``NAME`` or
``NAME:ARGUMENT``; the argument reaches the source as its ``path`` option. Built in: ``labels``
(a labelled probing set), ``clip`` (the run's embedder); the demo world adds ``planted``. Sources
register through the ``dnd.backends`` entry points like every other backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from dnd.errors import ConfigError
from dnd.registry import Registry

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.store.layout import RunLayout


@dataclass
class ProbeImages:
    """The probing set as Step 1 kept it: aligned image ids, references and source names."""

    image_ids: list[str]
    refs: list[str]
    sources: list[str]


@dataclass
class ScoringContext:
    """What a source may use: the run's config (its embedder, probe storage), its layout (caches) and a log."""

    config: RunConfig
    layout: RunLayout
    log: Callable[[str], None] = field(default=lambda message: None)


@dataclass
class ConceptVectors:
    """``soft[t, i]`` in [0, 1]: how present explanation t is in image i; ``present`` the binary
    reading AUPRC, F1 and IoU use; ``notes`` what the source wants the summary to say."""

    soft: np.ndarray
    present: np.ndarray
    notes: dict[str, Any] = field(default_factory=dict)


class ConceptSource(Protocol):
    """``vectors`` gives one concept vector per explanation over the probe images. A source may also
    define ``check(config)``, run on the driver before any Ray work, to refuse a run it cannot score."""

    def vectors(self, explanations: list[str], images: ProbeImages, context: ScoringContext) -> ConceptVectors: ...


CONCEPT_SOURCES: Registry[Callable[..., ConceptSource]] = Registry("concept source")


def parse_concepts(spec: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``"labels:/data/labels.csv"`` -> ("labels", {"path": "/data/labels.csv", **options})."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"concepts must name a source such as clip, labels:PATH or planted; got {spec!r}")
    name, _, argument = spec.strip().partition(":")
    merged = dict(options or {})
    if argument:
        if "path" in merged and merged["path"] != argument:
            raise ConfigError(f"concepts {spec!r} names path {argument!r} but its options say path={merged['path']!r}")
        merged["path"] = argument
    return name, merged


def build_source(spec: str, options: dict[str, Any] | None = None) -> ConceptSource:
    """The source ``spec`` names, its options checked like every backend's."""
    from types import SimpleNamespace

    from dnd.backends import load_backends
    from dnd.registry import check_options

    load_backends()
    name, merged = parse_concepts(spec, options)
    check_options(CONCEPT_SOURCES, SimpleNamespace(backend=name, options=merged), "faithfulness")
    return CONCEPT_SOURCES.create(name, **merged)


def check_source(config: RunConfig) -> None:
    """Refuse, before a run starts, a faithfulness section whose source or options cannot work."""
    spec = config.faithfulness
    if spec is None:
        return
    source = build_source(spec.concepts, spec.options)
    check = getattr(source, "check", None)
    if callable(check):
        check(config)


def needs_embedder(config: RunConfig, what: str) -> None:
    if config.selection.embedder is None:
        raise ConfigError(f"{what} needs the run's embedder (selection.embedder), and the run has none; "
                          "use labels:PATH without similarity, or give the run an embedder")


_ARTICLE = re.compile(r"^(a|an|the)\s+")


def normalise(text: str) -> str:
    """Lower case, single spaces, no leading article, underscores as spaces: "The_Golden retriever" -> "golden retriever"."""
    text = " ".join(str(text).replace("_", " ").lower().split())
    return _ARTICLE.sub("", text)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: the cut of its histogram that maximises the between-class
    variance. Values strictly above it are the upper class."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return high
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)  # the lower class's size for a cut after each bin
    total = weight[-1]
    mass = np.cumsum(counts * centres)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_low = mass / weight
        mean_high = (mass[-1] - mass) / (total - weight)
        between = weight * (total - weight) * (mean_low - mean_high) ** 2
    between[~np.isfinite(between)] = -1.0
    return float(edges[1:][int(np.argmax(between))])
