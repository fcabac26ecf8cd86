"""A reduced `dnd demo`: the real engine on the planted world recovers planted concepts."""

from dnd.synthetic.recovery import names, recovery


def test_reduced_demo_recovers_the_shape_detectors(local_ray, tmp_path):
    from dnd.synthetic.demo import run_demo

    # planted/2 detects triangles, planted/3 squares; fc/8.. are class outputs with known names.
    results, summary = run_demo(str(tmp_path / "demo"), neurons={"planted": [2, 3, 9], "fc": [8, 9]},
                                log=lambda m: None)
    frame = results.neurons
    assert len(frame) == 5 and set(frame["status"]) == {"ok"}
    labels = {(r.layer, int(r.neuron)): r.label for r in frame.itertuples()}
    assert names(labels[("planted", 2)], "triangle"), labels
    assert names(labels[("planted", 3)], "square"), labels
    # Every label is a phrase of the world, so the generator could render it and Step 3 scored it.
    for row in frame.itertuples():
        assert row.candidates[0]["images"] > 0
    assert summary["neurons"] == {"planted": 3, "fc": 2}
    assert 0.0 <= summary["accuracy"]["planted"] <= 1.0
    # The red detector's candidates come from captions of red circles: Step 3 has red among them.
    red = frame[(frame["layer"] == "planted") & (frame["neuron"] == 9)].iloc[0]
    assert any("red" in c["concept"] for c in red.candidates)
