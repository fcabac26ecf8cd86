"""Appendix A.6: neurons as detectors of classes the network was never trained on.

For each class name of another label set, the neuron whose label is closest to it in a text
embedding space (CLIP text or a sentence model) is used as a one-class detector: its summarised
activation (the paper's g) scores every image of a labelled folder, and its AUROC says how well it
separates that class's images from the others.
"""

from __future__ import annotations

from typing import Any

from dnd.errors import ConfigError


def analyze_ood(uri: str, data: str, layer: str | None = None, *, classes: "str | list[str] | None" = None,
                encoder: str = "clip", model: str | None = None, plot: str | None = None,
                batch_size: int = 64, device: str = "cpu") -> dict[str, Any]:
    """AUROC of the best-matching neuron for each class of ``data`` (subfolder names, or ``classes``
    naming them in sorted folder order)."""
    import numpy as np

    from dnd.evaluation import text
    from dnd.evaluation.common import layer_rows, plot_uri, run_config, safe_name
    from dnd.evaluation.fc import load_truth
    from dnd.evaluation.folder import layer_activations, read_labelled_folder, run_target
    from dnd.evaluation.metrics import auroc
    from dnd.evaluation.plots import bar_chart, write_png
    from dnd.results import Results

    if encoder not in ("clip", "sentence"):
        raise ConfigError(f"encoder must be 'clip' or 'sentence', got {encoder!r}")
    results = Results(uri)
    layer, rows = layer_rows(results, layer)
    folder = read_labelled_folder(data)
    names = folder.classes
    if classes is not None:
        names = load_truth(classes) if isinstance(classes, str) else [str(c) for c in classes]
        if len(names) != len(folder.classes):
            raise ConfigError(f"{len(names)} class names given for the {len(folder.classes)} class folders {folder.classes}")
    chosen_model = model or (text.DEFAULT_CLIP if encoder == "clip" else text.BUNDLED_MINILM)
    encode = text.clip_text_encoder(chosen_model, device) if encoder == "clip" else text.sentence_encoder(chosen_model, device)
    labels = [str(x) for x in rows["label"]]
    neurons = [int(n) for n in rows["neuron"]]
    similarity = encode(names) @ encode(labels).T

    config = run_config(results)
    summary = (config.get("step1") or {}).get("summary", "mean")
    activations = layer_activations(run_target(config), folder, layer, summary, batch_size)
    image_class = np.asarray(folder.labels)
    found = []
    for c, name in enumerate(names):
        best = int(np.argmax(similarity[c]))
        neuron = neurons[best]
        if neuron >= activations.shape[1]:
            raise ConfigError(f"neuron {neuron} is beyond layer {layer!r}'s {activations.shape[1]} neurons")
        positive = image_class == c
        found.append({
            "class": name, "neuron": neuron, "label": labels[best], "similarity": float(similarity[c, best]),
            "auroc": auroc(activations[:, neuron], positive),
            "positives": int(positive.sum()), "negatives": int((~positive).sum()),
        })
    scores = [f["auroc"] for f in found if f["auroc"] == f["auroc"]]
    where = write_png(
        bar_chart([f"{f['class']}: {f['neuron']}" for f in found], {"AUROC": [f["auroc"] for f in found]},
                  f"{layer}: AUROC of the closest-labelled neuron per class", "AUROC", y_max=1.0),
        plot_uri(results, plot, f"ood-{safe_name(layer)}"),
    )
    return {
        "layer": layer, "encoder": encoder, "model": chosen_model, "summary": summary,
        "images": len(folder), "classes": found,
        "mean_auroc": float(np.mean(scores)) if scores else float("nan"), "plot": where,
    }
