"""A reduced `dnd demo`: the real engine on the planted world recovers planted concepts."""

from dnd.synthetic.recovery import names, recovery


def test_reduced_demo_recovers_colour_shape_and_texture_detectors(local_ray, tmp_path):
    from dnd.synthetic.demo import run_demo

    # planted/0 detects blue, planted/2 triangles; fc/17 and fc/18 are the checkerboard and dots
    # class outputs. (The fc layer's top images are whole probe images: crops cut for the planted
    # layer's neurons do not compete there, or zoomed-in stripes would outrank real checkerboards.)
    results, summary = run_demo(str(tmp_path / "demo"), neurons={"planted": [0, 2, 9], "fc": [17, 18]},
                                log=lambda m: None)
    frame = results.neurons
    assert len(frame) == 5 and set(frame["status"]) == {"ok"}
    labels = {(r.layer, int(r.neuron)): r.label for r in frame.itertuples()}
    assert names(labels[("planted", 0)], "blue"), labels
    assert names(labels[("planted", 2)], "triangle"), labels
    assert names(labels[("fc", 17)], "checkerboard"), labels
    assert names(labels[("fc", 18)], "dots"), labels
    # Every label is a phrase of the world, so the generator could render it and Step 3 scored it.
    for row in frame.itertuples():
        assert row.candidates[0]["images"] > 0
    assert summary["neurons"] == {"planted": 3, "fc": 2}
    assert 0.0 <= summary["accuracy"]["planted"] <= 1.0
    # The red detector's candidates come from captions of red circles: Step 3 has red among them.
    red = frame[(frame["layer"] == "planted") & (frame["neuron"] == 9)].iloc[0]
    assert any("red" in c["concept"] for c in red.candidates)
