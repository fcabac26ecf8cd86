"""method clip-dissect on the planted world: Step 1 as for every method, then soft-WPMI over the
world's vocabulary plus distractors, with the world's embedder standing in for CLIP."""

from __future__ import annotations

from dnd.synthetic.truth import FC_CLASSES, PLANTED_NEURONS


def test_clip_dissect_names_the_planted_colour_neurons(local_ray, tmp_path):
    import dnd
    from dnd.synthetic.demo import demo_config

    config = demo_config(str(tmp_path / "clip-dissect"), probe_images=300, method="clip-dissect", crops=False,
                         faithfulness=None)
    config["clip_dissect"] = {"concept_set": "planted:200"}
    results = dnd.dissect(config, log=lambda m: None)
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
    assert 0 < counts["top_images_embedded"] <= 300
    # No captioner, summarizer or generator ran: CLIP-Dissect needs none of them.
    assert manifest["model_calls"]["captioner_images"] == 0 and manifest["model_calls"]["generator_images"] == 0
    assert manifest["method"]["name"] == "clip-dissect"
