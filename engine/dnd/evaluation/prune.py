"""Sections 5.2-5.3 and A.5: zero out a chosen set of a layer's neurons and measure what the
classifier loses, overall and per class, on a labelled image folder.

Neurons are chosen by concept (their label or one of their labels contains the text), as
singletons of the concept groups of section 5.1 (neurons no other neuron resembles), or at random
(the control: the same layer, a seeded draw). The classifier is the dissected network itself; a
folder's class names map to its outputs through ``classes`` (``imagenet``, a file, or a list), the
network's own class names, or integer folder names.
"""

from __future__ import annotations

from typing import Any

from dnd.errors import ConfigError


def select_neurons(rows: Any, *, concept: str | None = None, singletons: list[int] | None = None,
                   random: int | None = None, seed: int = 0) -> tuple[str, list[int]]:
    """(how, neurons) for exactly one of the three ways of choosing."""
    import numpy as np

    given = [name for name, value in (("concept", concept), ("singletons", singletons), ("random", random)) if value is not None]
    if len(given) != 1:
        raise ConfigError(f"choose neurons one way: concept, singletons or random; got {given or 'none'}")
    neurons = [int(n) for n in rows["neuron"]]
    if concept is not None:
        text = concept.strip().casefold()
        if not text:
            raise ConfigError("concept to prune must be non-empty text")
        chosen = []
        for row in rows.itertuples():
            names = [row.label] + [str(x) for x in (row.labels if row.labels is not None else [])]
            if any(text in str(name).casefold() for name in names if name):
                chosen.append(int(row.neuron))
        return f"concept:{concept}", chosen
    if singletons is not None:
        return "singletons", sorted(int(n) for n in singletons)
    if isinstance(random, bool) or not isinstance(random, int) or not 0 <= random <= len(neurons):
        raise ConfigError(f"random must be a count between 0 and the layer's {len(neurons)} labelled neurons, got {random!r}")
    draw = np.random.default_rng(seed).choice(len(neurons), size=random, replace=False)
    return f"random:{random}:seed={seed}", sorted(neurons[i] for i in draw)


def output_index(folder_classes: list[str], classes: "str | list[str] | None", target: Any) -> list[int]:
    """The network output of each folder class."""
    from dnd.evaluation.fc import load_truth

    names = load_truth(classes) if isinstance(classes, str) else classes
    names = names if names is not None else target.class_names
    if names is not None:
        where = {str(n): i for i, n in enumerate(names)}
        missing = [c for c in folder_classes if c not in where]
        if missing:
            raise ConfigError(f"folder class {missing[0]!r} is not among the network's class names "
                              f"(e.g. {list(where)[:5]}); name class folders after them or pass classes")
        return [where[c] for c in folder_classes]
    try:
        return [int(c) for c in folder_classes]
    except ValueError:
        raise ConfigError(f"folder classes {folder_classes[:5]} are not output indices and the network has no class "
                          f"names; pass classes ('imagenet' or a file with one name per line)") from None


def analyze_prune(uri: str, data: str, layer: str | None = None, *, concept: str | None = None,
                  singletons: bool = False, random: int | None = None, seed: int = 0, phi: float = 0.8,
                  clip_model: str | None = None, classes: "str | list[str] | None" = None,
                  plot: str | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy of the run's network on ``data`` before and after zeroing the chosen neurons of ``layer``."""
    import numpy as np

    from dnd.evaluation.common import layer_rows, plot_uri, run_config, safe_name
    from dnd.evaluation.folder import logits, read_labelled_folder, run_target, zeroed
    from dnd.evaluation.metrics import accuracy_by_class
    from dnd.evaluation.plots import bar_chart, write_png
    from dnd.results import Results

    results = Results(uri)
    layer, rows = layer_rows(results, layer)
    lonely = None
    if singletons:
        from dnd.evaluation.clusters import analyze_clusters

        lonely = analyze_clusters(uri, layer, phi=phi, clip_model=clip_model,
                                  plot=plot_uri(results, None, f"clusters-{safe_name(layer)}"))["singletons"]
    how, chosen = select_neurons(rows, concept=concept, singletons=lonely, random=random, seed=seed)
    folder = read_labelled_folder(data)
    target = run_target(run_config(results))
    outputs = output_index(folder.classes, classes, target)
    truth = np.asarray([outputs[c] for c in folder.labels])

    before = logits(target, folder, batch_size)
    with zeroed(target, layer, chosen):
        after = logits(target, folder, batch_size)
    if max(outputs) >= before.shape[1]:
        raise ConfigError(f"class output {max(outputs)} is beyond the network's {before.shape[1]} outputs")
    accuracy_before = accuracy_by_class(before.argmax(axis=1) == truth, folder.labels, folder.classes)
    accuracy_after = accuracy_by_class(after.argmax(axis=1) == truth, folder.labels, folder.classes)
    names = list(accuracy_before["per_class"])
    where = write_png(
        bar_chart(names, {"before": [accuracy_before["per_class"][c] for c in names],
                          "after": [accuracy_after["per_class"][c] for c in names]},
                  f"{layer}: accuracy per class, {len(chosen)} neurons pruned ({how})", "accuracy", y_max=1.0),
        plot_uri(results, plot, f"prune-{safe_name(layer)}"),
    )
    return {
        "layer": layer,
        "selection": how,
        "pruned": chosen,
        "pruned_fraction": len(chosen) / len(rows),
        "images": len(folder),
        "accuracy_before": accuracy_before,
        "accuracy_after": accuracy_after,
        "plot": where,
    }
