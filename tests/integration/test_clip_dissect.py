"""method clip-dissect and ``dnd compare`` on the planted world: one comparison (CLIP-Dissect over the
world's vocabulary plus distractors, with the world's embedder standing in for CLIP, beside the paper's
method taking CLIP-Dissect's top concepts as extra candidates) serves every check here, on one Step 1.

The target counts the images it is run on (tests/support/counting_target.py), so "Step 1 once" is
checked against the model's own forward passes, not against the engine's counters."""

from __future__ import annotations

import os

import pytest

from dnd.synthetic.truth import FC_CLASSES, PLANTED_NEURONS
from tests.support.counting_target import images_counted

PROBE_IMAGES = 300
EXTRA_CANDIDATES = 3


@pytest.fixture(scope="module")
def compared(local_ray, tmp_path_factory):
    import dnd
    from dnd.synthetic.demo import demo_config

    root = tmp_path_factory.mktemp("compare")
    counts = root / "forward-passes"
    counts.mkdir()
    config = demo_config(str(root / "unused"), probe_images=PROBE_IMAGES, method="clip-dissect", crops=False)
    config["target"] = {"model": "python:tests.support.counting_target:build", "weights": "DEFAULT",
                        "batch_size": 128, "options": {"count_dir": str(counts)}}
    config["clip_dissect"] = {"concept_set": "planted:200"}
    # The paper's method with CLIP-Dissect's top concepts appended to its candidates; Step 3 off, so
    # the target runs on probe images only and every forward pass counted is Step 1's.
    summary = dnd.compare(config, "clip-dissect,paper", str(root / "cmp"), log=lambda m: None, options=[
        f"paper:candidates.clip_dissect_top={EXTRA_CANDIDATES}", "paper:selection.enabled=false"])
    runs = {name: dnd.Results(uri) for name, uri in summary["runs"].items()}
    return summary, runs, counts, root / "cmp"


def test_clip_dissect_names_the_planted_colour_neurons(compared):
    _, runs, _, _ = compared
    results = runs["clip-dissect"]
    frame = results.neurons
    assert set(frame["status"]) == {"ok"} and len(frame) == len(PLANTED_NEURONS) + len(FC_CLASSES)
    labels = {(r.layer, int(r.neuron)): r.label for r in frame.itertuples()}
    colours = {"red", "green", "blue", "yellow", "orange", "purple", "white", "black"}
    planted_colours = [(i, n.concepts[0]) for i, n in enumerate(PLANTED_NEURONS) if n.kind == "color"]
    assert planted_colours and all(labels[("planted", i)] == c for i, c in planted_colours), labels
    fc_colours = [(i, name) for i, name in enumerate(FC_CLASSES) if name in colours]
    named = sum(labels[("fc", i)] == name for i, name in fc_colours)
    assert named >= len(fc_colours) - 1, {name: labels[("fc", i)] for i, name in fc_colours}
    for row in frame.itertuples():
        scores = [c["score"] for c in row.candidates]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert row.label == row.candidates[0]["concept"] == row.labels[0]
        assert list(row.captions) == []
    manifest = results.manifest
    counts = manifest["clip_dissect"]
    assert counts["concepts"] == len(FC_CLASSES) + 200 and counts["unreadable_images"] == 0
    assert 0 < counts["top_images_embedded"] <= PROBE_IMAGES
    # No captioner, summarizer or generator ran: CLIP-Dissect needs none of them. Its one model, the
    # embedder, saw each top image and each concept once (it ran first: nothing was cached).
    assert manifest["model_calls"]["captioner_images"] == 0 and manifest["model_calls"]["generator_images"] == 0
    assert manifest["model_calls"]["embedder_inputs"] == counts["top_images_embedded"] + counts["concepts"]
    assert manifest["method"]["name"] == "clip-dissect"
    # The shared Step 1 cut crops for the paper's method: the run says where it differs from its method.
    assert manifest["method"]["differs"]["step1.crops"] is True


def test_compare_runs_step1_once_for_every_method(compared):
    summary, runs, counts, root = compared
    first, second = runs["clip-dissect"], runs["paper"]
    images = first.images()
    tops, crops = int((images["kind"] == "probe").sum()), int((images["kind"] == "crop").sum())
    assert crops > 0  # the paper's method needs crops, so the shared Step 1 cut them
    # Pass A reads every probe image once; pass B re-reads each top image once and scores its crops.
    # Nothing else runs the target (Step 3 is off), and the driver's shape probes are left out.
    assert images_counted(counts, exclude_pids=(os.getpid(),)) == PROBE_IMAGES + tops + crops
    assert first.manifest["model_calls"]["target_probe_images"] == PROBE_IMAGES + tops + crops
    assert second.manifest["model_calls"]["target_probe_images"] == 0
    assert first.manifest["run"]["step1_from_checkpoint"] is False
    assert second.manifest["run"]["step1_from_checkpoint"] is True
    assert summary["step1"]["computed_by"] == "clip-dissect"
    # Both runs describe the same neurons from the same top images, stored once, in the shared Step 1.
    key = ["layer", "neuron"]
    a, b = (run.neurons.sort_values(key).reset_index(drop=True) for run in (first, second))
    assert a[key].equals(b[key])
    assert [[t["image_id"] for t in row] for row in a["top_images"]] == [[t["image_id"] for t in row] for row in b["top_images"]]
    assert os.path.isdir(root / "step1" / "images") and not os.path.exists(root / "paper" / "images")
    assert len(second.images()) == len(images)


def test_hybrid_candidates_are_clip_dissects_best_concepts_after_the_summarys(compared):
    _, runs, _, _ = compared
    ours = {(r.layer, int(r.neuron)): r for r in runs["clip-dissect"].neurons.itertuples()}

    def appended(head: list[str], best: list[str]) -> list[str]:
        held = {" ".join(c.split()).casefold() for c in head}
        return [c for c in best if " ".join(c.split()).casefold() not in held]

    checked = 0
    for row in runs["paper"].neurons.itertuples():
        if row.status != "ok":
            continue
        concepts = [c["concept"] for c in row.candidates]
        best = [c["concept"] for c in ours[(row.layer, int(row.neuron))].candidates][:EXTRA_CANDIDATES]
        # Step 2B's candidates (at most the summarizer's 5) first, then each of CLIP-Dissect's best
        # concepts they do not already hold, in CLIP-Dissect's order.
        splits = [k for k in range(EXTRA_CANDIDATES + 1)
                  if len(concepts) - k <= 5 and concepts[len(concepts) - k:] == appended(concepts[: len(concepts) - k], best)]
        assert splits, (row.layer, row.neuron, concepts, best)
        checked += 1
    assert checked >= len(PLANTED_NEURONS)
    added = runs["paper"].manifest["clip_dissect_candidates"]["added"]
    assert 0 < added <= EXTRA_CANDIDATES * checked


def test_compare_writes_a_table_per_layer_with_every_methods_label_and_scores(compared):
    import pyarrow.parquet as pq

    summary, runs, _, root = compared
    assert summary["methods"] == ["clip-dissect", "paper"] and summary["concepts"] == "planted"
    for layer in ("planted", "fc"):
        table = pq.read_table(root / "table" / f"layer={layer}.parquet").to_pandas()
        for name, run in runs.items():
            frame = run.neurons[run.neurons["layer"] == layer].sort_values("neuron")
            assert list(table["neuron"]) == list(frame["neuron"])
            assert list(table[f"{name}.label"]) == list(frame["label"])
            assert list(table[f"{name}.correlation"]) == pytest.approx([f["correlation"] for f in frame["faithfulness"]],
                                                                       nan_ok=True)
            # _COMPARE's mean is the run's own summary of the same scores.
            mean = summary["summary"][name]["per_layer"][layer]["auprc"]
            assert mean == runs[name].manifest["faithfulness"]["per_layer"][layer]["auprc"]["mean"]
    for name in runs:
        cost = summary["summary"][name]
        assert cost["ok"] == cost["neurons"] == len(PLANTED_NEURONS) + len(FC_CLASSES)
        assert cost["seconds_per_neuron"] > 0


def test_a_compared_run_is_scored_again_from_the_shared_step1(compared):
    import dnd

    _, runs, _, _ = compared
    # dnd score finds the kept activations where the run's _SUCCESS says its Step 1 is.
    again = dnd.score(runs["paper"].uri, "planted", alpha=0.2, log=lambda m: None)
    assert again["neurons_scored"] == len(runs["paper"].neurons)
