"""Section 4.2.1: how close final-layer labels are to the class names the neurons were trained on.

For each final-layer neuron i, its label is compared with class name i by the cosine of CLIP text
embeddings, the cosine of sentence embeddings, and BERTScore F1; each metric is the mean over
neurons. A constant label for every neuron ("depictions", the paper's sanity check) is scored the
same way, so a number can be read against what saying nothing specific gets.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from dnd.errors import ConfigError
from dnd.store.fs import open_uri, url_to_fs

METRICS = ("clip", "sentence", "bertscore")
DEFAULT_BASELINE = "depictions"


def parse_metrics(value: "str | list[str] | tuple[str, ...]") -> list[str]:
    names = [m.strip() for m in (value.split(",") if isinstance(value, str) else value) if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ConfigError(f"unknown metric(s) {bad or value!r}; expected a comma-separated subset of {','.join(METRICS)}")
    return list(dict.fromkeys(names))


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names as torchvision's weight metadata spells them (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_truth(truth: str) -> list[str]:
    """``imagenet`` or a file (local or URI) with one class name per line, line i = neuron i."""
    if truth == "imagenet":
        return imagenet_class_names()
    try:
        with open_uri(truth, "rb") as handle:
            text = handle.read().decode("utf-8")
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"cannot read the truth file {truth!r} ({exc}); expected 'imagenet' or a file with one class name per line") from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ConfigError(f"truth file {truth!r} has no class names; expected one name per line")
    empty = [i for i, name in enumerate(names) if not name]
    if empty:
        raise ConfigError(f"truth file {truth!r} line {empty[0] + 1} is empty; expected one class name per line")
    return names


def load_labels(source: str, layer: str | None = None) -> dict[int, str]:
    """neuron -> label from a CSV with columns ``neuron,label`` or from a run's neurons table.

    A run's failed neurons (no label) are left out. In a run with several layers, ``layer`` picks
    one; by default the run's last layer, which is the final layer when layers are listed in order.
    """
    if source.lower().endswith(".csv"):
        return _labels_from_csv(source)
    from dnd.results import Results

    frame = Results(source).neurons
    layers = list(dict.fromkeys(frame["layer"]))
    if layer is None:
        layer = layers[-1] if layers else None
    if layer not in layers:
        raise ConfigError(f"run {source!r} has no layer {layer!r}; its layers are {layers}")
    rows = frame[(frame["layer"] == layer) & frame["label"].notna()]
    return {int(n): str(label).strip() for n, label in zip(rows["neuron"], rows["label"])}


def _labels_from_csv(path: str) -> dict[int, str]:
    fs, local = url_to_fs(path)
    if not fs.exists(local):
        raise ConfigError(f"labels file {path!r} does not exist; expected a run URI or a CSV with columns neuron,label")
    with fs.open(local, "rb") as handle:
        reader = csv.DictReader(io.StringIO(handle.read().decode("utf-8")))
        if not reader.fieldnames or not {"neuron", "label"} <= set(reader.fieldnames):
            raise ConfigError(f"labels file {path!r} has columns {reader.fieldnames}; expected neuron,label")
        labels: dict[int, str] = {}
        for line, row in enumerate(reader, start=2):
            try:
                neuron = int(row["neuron"])
            except (TypeError, ValueError):
                raise ConfigError(f"labels file {path!r} line {line}: neuron {row['neuron']!r} is not an integer") from None
            if neuron in labels:
                raise ConfigError(f"labels file {path!r} line {line}: neuron {neuron} appears twice")
            labels[neuron] = (row["label"] or "").strip()
    return labels


def eval_fc(
    labels: "str | dict[int, str]",
    truth: "str | list[str]" = "imagenet",
    *,
    metrics: "str | list[str]" = METRICS,
    clip_model: str | None = None,
    sentence_model: str | None = None,
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
    baseline: str | None = DEFAULT_BASELINE,
    layer: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Mean similarity of each neuron's label to its class name (and of a constant baseline label).

    ``labels``: a run URI, a ``neuron,label`` CSV, or a dict. ``truth``: ``imagenet``, a file with
    one name per line, or a list. Returns ``{"n", <metric>: mean, ..., "baseline": {...}}``.
    """
    from dnd.evaluation import bertscore as bs
    from dnd.evaluation import text

    chosen = parse_metrics(metrics)
    by_neuron = load_labels(labels, layer) if isinstance(labels, str) else {int(k): str(v).strip() for k, v in labels.items()}
    names = load_truth(truth) if isinstance(truth, str) else [str(n) for n in truth]
    outside = sorted(n for n in by_neuron if not 0 <= n < len(names))
    if outside:
        raise ConfigError(f"neuron {outside[0]} has no class name: the truth has {len(names)} names (neurons 0..{len(names) - 1})")
    empty = [n for n, label in by_neuron.items() if not label]
    if empty:
        raise ConfigError(f"neuron {empty[0]} has an empty label; expected a description for every neuron listed")
    if not by_neuron:
        raise ConfigError("no labelled neurons to evaluate")
    neurons = sorted(by_neuron)
    predicted = [by_neuron[n] for n in neurons]
    reference = [names[n] for n in neurons]
    constant = [baseline] * len(neurons) if baseline else None

    result: dict[str, Any] = {"n": len(neurons)}
    models: dict[str, str] = {}
    base: dict[str, Any] = {"label": baseline} if baseline else {}
    for metric in chosen:
        if metric == "bertscore":
            scorer = bs.BERTScorer(bertscore_model or bs.DEFAULT_MODEL, bertscore_layer, device=device)
            models[metric] = scorer.model_name
            score = lambda left, right: scorer.f1(left, right)  # noqa: E731
        else:
            model = (clip_model or text.DEFAULT_CLIP) if metric == "clip" else (sentence_model or text.DEFAULT_SENTENCE)
            encoder = text.clip_text_encoder(model, device) if metric == "clip" else text.sentence_encoder(model, device)
            models[metric] = model
            score = lambda left, right, encoder=encoder: text.paired_cosines(encoder, left, right)  # noqa: E731
        result[metric] = float(score(predicted, reference).mean())
        if constant:
            base[metric] = float(score(constant, reference).mean())
    result["models"] = models
    if baseline:
        result["baseline"] = base
    return result
