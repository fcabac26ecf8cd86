"""Concept sources without Ray: labels from a CSV or an ImageFolder tree, the planted world's truth,
Otsu's threshold, and how a concepts spec is read."""

import numpy as np
import pytest

from dnd.errors import ConfigError
from dnd.faithfulness.labels import LabelSource
from dnd.faithfulness.sources import ProbeImages, normalise, otsu_threshold, parse_concepts


def probe(refs):
    return ProbeImages([f"id{i}" for i in range(len(refs))], refs, ["s"] * len(refs))


def test_a_concepts_spec_names_a_source_and_its_path():
    assert parse_concepts("clip") == ("clip", {})
    assert parse_concepts("labels:/data/l.csv", {"similarity": 0.8}) == ("labels", {"path": "/data/l.csv", "similarity": 0.8})
    with pytest.raises(ConfigError, match="clip, labels:PATH or planted"):
        parse_concepts("  ")


def test_labels_are_normalised_before_they_are_compared():
    assert normalise("The_Golden  Retriever") == "golden retriever"
    assert normalise("an Apple") == "apple"


def test_labels_from_a_csv_by_reference_or_by_file_name(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("image,label\n/data/a.png,Dog,ball\nb.png,cat\n/other/c.png,dog\n")
    images = probe(["/data/a.png", "file:///probe/b.png", "/probe/c.png", "/probe/d.png"])
    vectors = LabelSource(str(table)).vectors(["a dog", "cat", "ball", "horse"], images, None)
    assert vectors.present.tolist() == [
        [True, False, True, False],  # "a dog": a.png by its path, c.png by its file name
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
    ]
    assert vectors.notes["labelled_images"] == 3
    assert vectors.soft.dtype == np.float32 and vectors.soft[0].tolist() == [1, 0, 1, 0]


def test_labels_from_an_imagefolder_root(tmp_path):
    for name in ("golden_retriever", "tabby"):
        (tmp_path / name).mkdir()
    images = probe([f"{tmp_path}/golden_retriever/1.jpg", f"{tmp_path}/tabby/2.jpg", "/elsewhere/3.jpg"])
    vectors = LabelSource(str(tmp_path)).vectors(["golden retriever", "tabby"], images, None)
    assert vectors.present.tolist() == [[True, False, False], [False, True, False]]


def test_labels_that_name_no_probe_image_are_refused_with_an_example(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("x.png,dog\n")
    with pytest.raises(ConfigError, match="none of the run's 1 probe images.*'/probe/a.png'"):
        LabelSource(str(table)).vectors(["dog"], probe(["/probe/a.png"]), None)
    table.write_text("x.png\n")
    with pytest.raises(ConfigError, match="line 1: expected image,label"):
        LabelSource(str(table)).vectors(["dog"], probe(["/probe/x.png"]), None)


def test_otsu_splits_two_clusters_between_them():
    # Two tight clusters at 0.1 and 0.9: any cut between them has the same (maximal) between-class
    # variance, and the first such cut is just above the lower cluster.
    values = np.array([0.1] * 30 + [0.9] * 10)
    cut = otsu_threshold(values)
    assert 0.1 <= cut < 0.9
    assert ((values > cut) == (values == 0.9)).all()
    assert otsu_threshold(np.array([0.4, 0.4])) == 0.4


def test_the_planted_source_knows_what_each_probe_scene_holds():
    from dnd.synthetic.concepts import PlantedSource, present_in
    from dnd.synthetic.probe import probe_uri
    from dnd.synthetic.world import parse_phrase, probe_scene

    uri = probe_uri(40, seed=3)
    refs = [f"{uri}#i={i}" for i in range(40)]
    vectors = PlantedSource().vectors(["red", "circle", "a teapot"], probe(refs), None)
    scenes = [probe_scene(3, i) for i in range(40)]
    # Worked from the scenes themselves: an image holds "red" when one of its objects is red.
    assert vectors.present[0].tolist() == [any(o.color == "red" for o in s.objects) for s in scenes]
    assert vectors.present[1].tolist() == [any(o.shape == "circle" for o in s.objects) for s in scenes]
    assert not vectors.present[2].any() and vectors.notes["outside_vocabulary"] == 1
    assert present_in(parse_phrase("circle"), scenes[0]) == vectors.present[1][0]
    with pytest.raises(ConfigError, match="only the planted probe"):
        PlantedSource().vectors(["red"], probe(["/data/a.png"]), None)
