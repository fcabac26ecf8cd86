"""dnd — Describe-and-Dissect at the scale of whole networks.

Importing this package is cheap: torch, Ray and the model libraries load only when a run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from dnd.config import RunConfig
    from dnd.results import Results

__all__ = [
    "dissect", "compare", "load_config", "Results", "RunConfig", "__version__",
    "report", "eval_fc", "analyze_clusters", "analyze_prune", "analyze_ood",
]


def dissect(config: "RunConfig | dict | str", **overrides: Any) -> "Results":
    """Run Describe-and-Dissect for ``config`` (a RunConfig, a dict, or a YAML path) on the current
    Ray cluster (a local one is started when none is running) and return its :class:`Results`."""
    from dnd.pipeline import dissect as _dissect

    return _dissect(config, **overrides)


def compare(config: "RunConfig | dict | str", methods: "str | list[str]" = "paper,dnd,clip-dissect",
            out: str | None = None, **options: Any) -> dict:
    """Describe ``config``'s neurons with each of ``methods`` on one shared Step 1, score them alike,
    and return the comparison (see ``dnd compare``); each method's run is at ``<out>/<method>``."""
    from dnd.methods.compare import compare as _compare

    return _compare(config, methods, out, **options)


def load_config(source: Any, overrides: list[str] | None = None) -> "RunConfig":
    from dnd.config import load_config as _load

    return _load(source, overrides or [])


def report(uri: str, out: str | None = None, **options: Any) -> str:
    """Write the static HTML report of the run at ``uri`` (default ``<uri>/report``); return index.html's location."""
    from dnd.report.build import build_report

    return build_report(uri, out, **options)


def score(uri: str, concepts: str, **options: Any) -> dict:
    """Faithfulness of every label and candidate of the run at ``uri`` against ``concepts`` (clip,
    labels:PATH, planted); writes the scores into ``neurons/`` and returns the summary (see ``dnd score``)."""
    from dnd.faithfulness.score import score as _score

    return _score(uri, concepts, **options)


def eval_fc(labels: Any, truth: Any = "imagenet", **options: Any) -> dict:
    """Section 4.2.1: mean similarity of final-layer labels to class names (see ``dnd eval fc``)."""
    from dnd.evaluation.fc import eval_fc as _eval_fc

    return _eval_fc(labels, truth, **options)


def analyze_clusters(uri: str, layer: str | None = None, **options: Any) -> dict:
    """Section 5.1: group a layer's neurons by the similarity of their candidate concepts."""
    from dnd.evaluation.clusters import analyze_clusters as _analyze

    return _analyze(uri, layer, **options)


def analyze_prune(uri: str, data: str, layer: str | None = None, **options: Any) -> dict:
    """Sections 5.2-5.3: accuracy per class before and after zeroing chosen neurons."""
    from dnd.evaluation.prune import analyze_prune as _analyze

    return _analyze(uri, data, layer, **options)


def analyze_ood(uri: str, data: str, layer: str | None = None, **options: Any) -> dict:
    """Appendix A.6: AUROC of the closest-labelled neuron as a detector of each class of another label set."""
    from dnd.evaluation.ood import analyze_ood as _analyze

    return _analyze(uri, data, layer, **options)


def __getattr__(name: str) -> Any:
    if name == "Results":
        from dnd.results import Results

        return Results
    if name == "RunConfig":
        from dnd.config import RunConfig

        return RunConfig
    raise AttributeError(name)
