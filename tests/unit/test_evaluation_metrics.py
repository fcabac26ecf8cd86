"""The small pieces behind `dnd analyze` and `dnd report`, checked against independent computations."""

import io

import numpy as np
import pytest
from PIL import Image

from dnd.evaluation.clusters import group_neurons
from dnd.evaluation.metrics import accuracy_by_class, auroc
from dnd.evaluation.plots import bar_chart
from dnd.report.data import box_percent


def test_auroc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    positive = rng.random(200) < 0.3
    assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))
    assert np.isnan(auroc(scores, np.zeros(200, dtype=bool)))


def test_accuracy_by_class():
    result = accuracy_by_class([True, False, True, True], [0, 0, 1, 1], ["cat", "dog", "eel"])
    assert result == {"overall": 0.75, "per_class": {"cat": 0.5, "dog": 1.0}}


def test_groups_are_cliques_covering_every_neuron_once():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(30, 4))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    similarity = points @ points.T
    for phi in (-1.0, 0.3, 0.8, 1.0):
        groups = group_neurons(similarity, phi)
        assert sorted(n for g in groups for n in g) == list(range(30))
        for g in groups:
            assert all(similarity[a, b] >= phi or a == b for a in g for b in g)
    assert len(group_neurons(similarity, -1.0)) == 1
    assert len(group_neurons(similarity, 1.0 + 1e-9)) == 30


def test_crop_box_as_percent_of_its_parent():
    assert box_percent([10, 20, 60, 70], {"width": 200, "height": 100}) == [5.0, 20.0, 25.0, 50.0]
    assert box_percent([10, 20, 60, 70], None) is None


def test_bar_chart_is_a_png():
    data = bar_chart(["a", "b"], {"before": [0.5, 1.0], "after": [0.25, 0.0]}, "title", "accuracy", y_max=1.0)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.width >= 300


def test_report_data_scripts_cannot_close_their_script_element():
    from dnd.report.build import _script

    text = _script("DND_LAYER", 0, [{"label": "</script><b>x"}]).decode()
    assert "</script>" not in text and "<\\/script>" in text
