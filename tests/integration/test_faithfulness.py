"""Faithfulness on real runs of the planted world: Step 1 keeps every probe image's activations, the
run scores every label and candidate against the world's truth, NeuronEval's sanity checks hold on
the real neurons, and ``dnd score`` rescores a finished run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dnd.faithfulness.metrics import METRICS, score_pairs
from dnd.synthetic.truth import planted_truth
from tests.integration.conftest import copy_of_run

#: The demo's probing set (dnd demo's default).
PROBE_IMAGES = 600


@pytest.fixture(scope="module")
def scored_demo(demo_run):
    """The tier's demo run: it keeps its activations and scores its labels against the planted truth."""
    results, _, out = demo_run
    return results, out


def truth_vectors(run):
    """Every neuron's truth over the probe (a polysemantic neuron's is the union of its two
    concepts), with the kept activations: (kept, {layer: (positions, soft, present)})."""
    from dnd.faithfulness.score import concept_vectors

    truth = planted_truth()
    texts = sorted({c for layer in truth.values() for entry in layer.values() for c in entry["concepts"]})
    kept, vectors = concept_vectors(str(run), "planted", texts)
    row = {text: t for t, text in enumerate(texts)}
    out = {}
    for layer, entries in truth.items():
        neurons = sorted(entries)
        present = np.stack([np.any([vectors.present[row[c]] for c in entries[n]["concepts"]], axis=0) for n in neurons])
        positions = [kept.layers[layer].index(n) for n in neurons]
        out[layer] = (positions, present)
    return kept, out


def test_the_run_keeps_every_activation_and_scores_every_label(scored_demo):
    results, run = scored_demo
    manifest = results.manifest
    kept_counts = manifest["counts"]["activations_kept"]
    assert kept_counts["images"] == manifest["counts"]["images_used"] == PROBE_IMAGES
    assert kept_counts["dtype"] == "float16" and kept_counts["neurons"] == 16 + 19 and kept_counts["bytes"] > 0

    from dnd.store.activations import read_activations
    from dnd.store.layout import RunLayout

    kept = read_activations(RunLayout(str(run)))
    column = {image: i for i, image in enumerate(kept.image_ids)}
    frame = results.neurons
    for layer in ("planted", "fc"):
        matrix = kept.matrix(layer)
        for row in frame[frame["layer"] == layer].itertuples():
            # Step 1's top-K probe images carry the same activations as the kept vectors (float16).
            values = matrix[kept.layers[layer].index(int(row.neuron))]
            for top in row.top_images:
                if not top["is_crop"]:
                    assert values[column[top["image_id"]]] == pytest.approx(top["activation"], rel=2e-3, abs=2e-3)
            probes = [t["activation"] for t in row.top_images if not t["is_crop"]]
            if probes:  # the best probe image is in the top-K whenever any probe image is (crops may fill it)
                assert values.max() == pytest.approx(max(probes), rel=2e-3, abs=2e-3)

    summary = manifest["faithfulness"]
    assert summary["concepts"] == "planted" and summary["neurons_scored"] == 35
    assert summary["per_layer"]["planted"]["neurons_scored"] == 16
    for row in frame.itertuples():
        assert row.faithfulness["concepts"] == "planted"
        same = [c["faithfulness"] for c in row.candidates if c["concept"] == row.label]
        # The label's scores are its candidate's: one explanation, one vector, one score.
        assert same and all(same[0][m] == row.faithfulness[m] for m in METRICS)
    # The world's labels are faithful on the planted layer: most labels detect their neuron's images.
    aucs = [r.faithfulness["auprc"] for r in frame[frame["layer"] == "planted"].itertuples()]
    assert np.median([a if a is not None else 0 for a in aucs]) > 0.5


@pytest.mark.parametrize("metric", METRICS)
def test_missing_and_extra_labels_lower_the_truths_score_on_real_neurons(scored_demo, metric):
    """NeuronEval's two sanity checks, on the planted network's real activations: removing half of
    the truth's positive images, or adding as many absent images as present, lowers its score.
    F1 and IoU use the run's α (the demo's, suited to how often the world's concepts occur)."""
    results, run = scored_demo
    alpha = results.manifest["faithfulness"]["alpha"]
    kept, truth = truth_vectors(run)
    rng = np.random.default_rng(0)
    lowered, checked = 0, 0
    for layer, (positions, present) in truth.items():
        activations = kept.matrix(layer)
        for j, position in enumerate(positions):
            base = present[j]
            if base.sum() < 2 or (~base).sum() < base.sum():
                continue
            missing, extra = base.copy(), base.copy()
            missing[rng.choice(np.flatnonzero(base), size=base.sum() // 2, replace=False)] = False
            extra[rng.choice(np.flatnonzero(~base), size=base.sum(), replace=False)] = True
            vectors = np.stack([base, missing, extra]).astype(np.float32)
            scores = score_pairs(activations, vectors, [position] * 3, [0, 1, 2], alpha=alpha, metrics=(metric,))[metric]
            checked += 1
            lowered += bool(scores[1] < scores[0] and scores[2] < scores[0])
    assert checked >= 30
    assert lowered / checked >= 0.9, (metric, lowered, checked)


@pytest.mark.parametrize("metric", ["correlation", "auprc"])
def test_each_neurons_own_concept_outranks_the_other_neurons_concepts(scored_demo, metric):
    _, run = scored_demo
    kept, truth = truth_vectors(run)
    first, total = 0, 0
    for layer, (positions, present) in truth.items():
        n = len(positions)
        neuron_of = np.repeat(positions, n)
        concept_of = np.tile(np.arange(n), n)
        scores = score_pairs(kept.matrix(layer), present.astype(np.float32), neuron_of, concept_of,
                             metrics=(metric,))[metric].reshape(n, n)
        scores = np.nan_to_num(scores, nan=-np.inf)
        first += int((scores.argmax(axis=1) == np.arange(n)).sum())
        total += n
    assert first / total >= 0.8, (metric, first, total)


def test_dnd_score_rescores_a_finished_run_with_clip_and_reuses_the_embeddings(scored_demo, tmp_path, capsys):
    import dnd
    from dnd.cli import main

    _, run = scored_demo
    copy = copy_of_run(run, tmp_path / "copy")
    assert main(["score", str(copy), "--concepts", "clip", "--metrics", "correlation,auprc"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["concepts"] == "clip" and printed["metrics"] == ["correlation", "auprc"]
    assert printed["source"]["unreadable_images"] == 0
    rescored = dnd.Results(str(copy))
    assert rescored.manifest["faithfulness"]["concepts"] == "clip"
    for row in rescored.neurons.itertuples():
        assert row.faithfulness["concepts"] == "clip" and row.faithfulness["f1"] is None
        assert all(c["faithfulness"]["iou"] is None for c in row.candidates)
    # The second scoring embeds nothing: every probe image and explanation comes from the cache.
    messages = []
    dnd.score(str(copy), "clip", log=messages.append)
    embedded = [m for m in messages if " embedded (" in m]
    assert len(embedded) == 2 and all(m.split(": ")[-1].split(" ")[0] == m.split("(")[1].split(" ")[0] for m in embedded), embedded


def test_dnd_score_names_what_is_wrong(smoke_run, scored_demo, tmp_path, capsys):
    from dnd.cli import main

    _, smoke = smoke_run
    assert main(["score", str(smoke), "--concepts", "clip"]) == 2
    assert "kept no activations" in capsys.readouterr().err
    _, run = scored_demo
    assert main(["score", str(run), "--concepts", "nosuch"]) == 2
    assert "unknown concept source backend 'nosuch'" in capsys.readouterr().err
    assert main(["score", str(run), "--concepts", f"labels:{tmp_path}/missing.csv"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["score", str(run), "--concepts", "planted", "--alpha", "2"]) == 2
    assert "alpha" in capsys.readouterr().err
    assert main(["score", str(tmp_path), "--concepts", "planted"]) == 2
    assert "no finished run" in capsys.readouterr().err
