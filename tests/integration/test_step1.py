"""Step 1 on a local Ray against a plain PyTorch computation of the same top-K on the same images."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from dnd.config import load_config
from dnd.models.preprocess import Preprocessor
from dnd.models.recorder import LayerRecorder, neuron_maps, summarize
from dnd.models.target import build_target
from dnd.probe.generated import render_shapes
from dnd.probe.sources import image_id
from dnd.results import Results

N_IMAGES = 60
LAYERS = ["layer2", "fc"]


def config_for(tmp_path, **step1):
    return load_config(
        {
            "target": {"model": "torchvision:resnet18", "weights": "random-tiny", "batch_size": 16},
            "layers": LAYERS,
            "neurons": {"layer2": "0:6", "fc": [0, 3, 9]},
            "probe": {"sources": [{"uri": f"gen://shapes?n={N_IMAGES}&seed=3&size=48"}], "files_per_read_task": 16},
            "step1": {"top_k": 4, **step1},
            "captioner": None,
            "output": {"uri": str(tmp_path / "run")},
        }
    )


def reference_activations(images):
    """Plain PyTorch: the same model and preprocessing, one image at a time."""
    target = build_target("torchvision:resnet18", "random-tiny")
    pre = Preprocessor(target)
    recorder = LayerRecorder(target, LAYERS)
    out = {}
    for identifier, image in images.items():
        view, _ = pre.view(image)
        outputs = recorder(pre.tensor(view).unsqueeze(0))
        out[identifier] = {name: summarize(neuron_maps(outputs[name], name), "mean")[0].numpy() for name in LAYERS}
    return out


@pytest.fixture(scope="module")
def probe_images():
    images = {}
    for i in range(N_IMAGES):
        data = render_shapes(3, i, 48)
        images[image_id(data)] = Image.open(io.BytesIO(data)).convert("RGB")
    return images


def test_top_k_without_crops_matches_plain_pytorch(local_ray, tmp_path, probe_images):
    from dnd.pipeline import dissect

    results = dissect(config_for(tmp_path, crops=False), log=lambda m: None)
    reference = reference_activations(probe_images)
    frame = results.neurons
    assert len(frame) == 6 + 3
    assert set(frame["status"]) == {"ok"}
    neurons = {"layer2": list(range(6)), "fc": [0, 3, 9]}
    for row in frame.itertuples():
        position = neurons[row.layer].index(row.neuron)
        values = {i: reference[i][row.layer][row.neuron] for i in reference}
        expected = sorted(values, key=lambda i: (-values[i], int(i, 16)))[:4]
        got = [t["image_id"] for t in row.top_images]
        assert got == expected, (row.layer, row.neuron)
        for t in row.top_images:
            assert t["activation"] == pytest.approx(values[t["image_id"]], rel=1e-4, abs=1e-5)
            assert not t["is_crop"]
        del position
    manifest = results.manifest
    assert manifest["counts"]["images_used"] == N_IMAGES
    assert manifest["counts"]["crops"] == 0


def test_crops_are_scored_like_any_image_and_can_enter_the_top_k(local_ray, tmp_path, probe_images):
    from dnd.pipeline import dissect

    results = dissect(config_for(tmp_path), log=lambda m: None)
    frame = results.neurons
    images = results.images()
    assert set(images["kind"]) == {"probe", "crop"}
    target = build_target("torchvision:resnet18", "random-tiny")
    pre = Preprocessor(target)
    recorder = LayerRecorder(target, LAYERS)
    crops_seen = 0
    for row in frame[frame["layer"] == "layer2"].itertuples():
        assert len(row.crops) > 0, "a conv neuron with varied top images should get attention crops"
        for t in row.top_images:
            if not t["is_crop"]:
                continue
            crops_seen += 1
            parent = probe_images[t["parent_id"]]
            x0, y0, x1, y1 = (int(v) for v in t["box"])
            assert 0 <= x0 < x1 <= parent.size[0] and 0 <= y0 < y1 <= parent.size[1]
            view, _ = pre.view(parent.crop((x0, y0, x1, y1)))
            outputs = recorder(pre.tensor(view).unsqueeze(0))
            value = summarize(neuron_maps(outputs["layer2"], "layer2"), "mean")[0, row.neuron].item()
            assert t["activation"] == pytest.approx(value, rel=1e-4, abs=1e-5)
            stored = images[images["image_id"] == t["image_id"]].iloc[0]
            assert stored["parent_id"] == t["parent_id"] and list(stored["box"]) == [x0, y0, x1, y1]
            assert Image.open(io.BytesIO(stored["data"])).size == (x1 - x0, y1 - y0)
    assert crops_seen > 0
    # A layer's D_cropped holds only crops cut from that layer's own maps, so a linear layer (no maps,
    # no crops) ranks whole probe images alone, and a conv layer's crops were all made for it.
    made_for = {row.image_id: json.loads(row.made_for) for row in images[images["kind"] == "crop"].itertuples()}
    layer_index = {name: i for i, name in enumerate(LAYERS)}
    for row in frame.itertuples():
        for t in row.top_images:
            if t["is_crop"]:
                assert any(l == layer_index[row.layer] for l, _ in made_for[t["image_id"]]), (row.layer, t)
    assert not any(t["is_crop"] for tops in frame[frame["layer"] == "fc"]["top_images"] for t in tops)
    # Every top image is stored in images/, and the probe images are byte-identical to the source.
    ids = {t["image_id"] for tops in frame["top_images"] for t in tops}
    assert ids <= set(images["image_id"])
    for row in images[images["kind"] == "probe"].itertuples():
        assert image_id(row.data) == row.image_id


def test_rerun_gives_identical_results(local_ray, tmp_path):
    from dnd.pipeline import dissect

    first = dissect(config_for(tmp_path / "a"), log=lambda m: None).neurons
    second = dissect(config_for(tmp_path / "b"), log=lambda m: None).neurons
    # Both runs hold every requested neuron (layer2 0:6, fc 0,3,9), in the same order, each with
    # its full top-K: zip() below would pass on two empty tables.
    keys = list(zip(first["layer"], first["neuron"].astype(int)))
    assert sorted(keys) == sorted([("layer2", n) for n in range(6)] + [("fc", n) for n in (0, 3, 9)])
    assert list(zip(second["layer"], second["neuron"].astype(int))) == keys
    assert all(len(tops) == 4 for tops in first["top_images"])
    for a, b in zip(first["top_images"], second["top_images"]):
        assert [t["image_id"] for t in a] == [t["image_id"] for t in b]
        assert [t["activation"] for t in a] == pytest.approx([t["activation"] for t in b], rel=1e-5, abs=1e-6)
    assert isinstance(Results(str(tmp_path / "a" / "run")).manifest["timings_s"]["total_s"], float)


def test_linear_neurons_get_gradcam_crops_for_half_their_top_k(local_ray, tmp_path, probe_images):
    from dnd.pipeline import dissect

    # Layer scope (method dnd's): every Grad-CAM crop of the fc layer competes for each fc neuron.
    results = dissect(config_for(tmp_path, linear_crops="gradcam", crop_scope="layer"), log=lambda m: None)
    frame = results.neurons
    images = results.images()
    crops = images[images["kind"] == "crop"]
    made_for = {row.image_id: json.loads(row.made_for) for row in crops.itertuples()}
    fc_index = LAYERS.index("fc")
    reference = reference_activations(probe_images)
    target = build_target("torchvision:resnet18", "random-tiny")
    pre = Preprocessor(target)
    recorder = LayerRecorder(target, LAYERS)
    for row in frame[frame["layer"] == "fc"].itertuples():
        assert len(row.crops) > 0, "Grad-CAM maps give a linear neuron attention crops"
        local = [t for t in row.top_images if t["is_crop"]]
        whole = [t for t in row.top_images if not t["is_crop"]]
        # K = 4: the best 2 crops and the best 2 whole images, whatever their activations.
        assert len(local) == 2 and len(whole) == 2
        values = {i: reference[i]["fc"][row.neuron] for i in reference}
        assert [t["image_id"] for t in whole] == sorted(values, key=lambda i: (-values[i], int(i, 16)))[:2]
        # The layer's D_cropped: every crop cut from some fc neuron's Grad-CAM map, scored here in
        # plain PyTorch for this neuron; the top-K's crops are its best two.
        layer_crops = crops[[any(l == fc_index for l, _ in made_for[i]) for i in crops["image_id"]]]
        scored = {}
        for crop in layer_crops.itertuples():
            x0, y0, x1, y1 = (int(v) for v in crop.box)
            assert (x1 - x0, y1 - y0) != probe_images[crop.parent_id].size, "a crop is a part of its parent image"
            view, _ = pre.view(probe_images[crop.parent_id].crop((x0, y0, x1, y1)))
            outputs = recorder(pre.tensor(view).unsqueeze(0))
            scored[crop.image_id] = summarize(neuron_maps(outputs["fc"], "fc"), "mean")[0, row.neuron].item()
        best_crops = sorted(scored, key=lambda i: (-scored[i], int(i, 16)))[:2]
        assert {t["image_id"] for t in local} == set(best_crops)
        for t in local:
            assert t["activation"] == pytest.approx(scored[t["image_id"]], rel=1e-4, abs=1e-5)


def test_crop_scope_neuron_ranks_each_neuron_among_its_own_crops(local_ray, tmp_path, probe_images):
    from dnd.pipeline import dissect

    results = dissect(config_for(tmp_path, crop_scope="neuron"), log=lambda m: None)
    frame = results.neurons
    images = results.images()
    crops = images[images["kind"] == "crop"]
    made_for = {row.image_id: json.loads(row.made_for) for row in crops.itertuples()}
    reference = reference_activations(probe_images)
    target = build_target("torchvision:resnet18", "random-tiny")
    pre = Preprocessor(target)
    recorder = LayerRecorder(target, LAYERS)
    crop_values = {}
    for crop in crops.itertuples():
        x0, y0, x1, y1 = (int(v) for v in crop.box)
        view, _ = pre.view(probe_images[crop.parent_id].crop((x0, y0, x1, y1)))
        outputs = recorder(pre.tensor(view).unsqueeze(0))
        crop_values[crop.image_id] = summarize(neuron_maps(outputs["layer2"], "layer2"), "mean")[0].numpy()
    layer2 = frame[frame["layer"] == "layer2"]
    assert len(layer2) == 6 and any(t["is_crop"] for tops in layer2["top_images"] for t in tops)
    for row in layer2.itertuples():
        # Independently: D_probe, plus the crops cut from this neuron's own map, ranked by this neuron.
        own = [i for i, makers in made_for.items() if [LAYERS.index("layer2"), row.neuron] in makers]
        values = {i: float(reference[i]["layer2"][row.neuron]) for i in reference}
        values.update({i: float(crop_values[i][row.neuron]) for i in own})
        expected = sorted(values, key=lambda i: (-values[i], int(i, 16)))[:4]
        assert [t["image_id"] for t in row.top_images] == expected, row.neuron


def test_pass_a_killed_midway_resumes_from_its_last_save_with_the_same_top_k(local_ray, tmp_path):
    """A pass A that dies after some batches resumes from its last progress save: it reads only what
    was not taken, and its top-K, counts and kept activations equal an undisturbed pass A's."""
    from dnd.activations.progress import PassAProgress
    from dnd.activations.reading import read_and_prepare
    from dnd.activations.step1 import run_pass_a
    from dnd.pipeline import plan_layers
    from dnd.probe.sources import plan_reads
    from dnd.store.activations import ActivationWriter, read_activations
    from dnd.store.layout import RunLayout

    config = config_for(tmp_path)
    layers = plan_layers(config)
    read_tasks, _ = plan_reads(config.probe)
    assert len(read_tasks) >= 3  # several read tasks, so a save can fall between them
    quiet = lambda message: None  # noqa: E731

    plain = RunLayout(str(tmp_path / "plain"))
    kept = ActivationWriter(plain, layers)
    undisturbed = run_pass_a(config, layers, read_tasks, quiet, kept=kept)
    kept.close()

    class DiesAfterTwoBatches(ActivationWriter):
        def add(self, *args):
            self.batches = getattr(self, "batches", 0) + 1
            if self.batches > 2:
                raise RuntimeError("killed")
            super().add(*args)

    layout = RunLayout(str(tmp_path / "killed"))
    dying = DiesAfterTwoBatches(layout, layers, flush_images=8)
    with pytest.raises(RuntimeError, match="killed"):
        run_pass_a(config, layers, read_tasks, quiet, kept=dying, progress=PassAProgress(layout, "d", 16, 1e9))
    dying.abort()
    progress = PassAProgress(layout, "d", 16, 1e9)
    saved = progress.saved
    assert saved is not None and 16 <= saved["images_read"] < N_IMAGES and saved["kept"]["images"] == len(saved["seen"])

    # A taken ref is not even decoded again, let alone run through the model.
    task = {name: [value] for name, value in {**read_tasks[0].as_row(), "task": 0}.items()}
    first_refs = [str(r) for r in read_and_prepare(task, None, None, {})["ref"]]
    again = read_and_prepare(task, None, None, {}, taken={0: first_refs[:5]})
    assert [str(r) for r in again["ref"]] == first_refs[5:] and set(again["task_rows"]) == {len(first_refs)}

    resumed_kept = ActivationWriter(layout, layers, resume=saved["kept"])
    delivered = []
    original_add = resumed_kept.add
    resumed_kept.add = lambda ids, *rest: (delivered.extend(ids), original_add(ids, *rest))
    resumed = run_pass_a(config, layers, read_tasks, quiet, kept=resumed_kept, progress=progress)
    resumed_kept.close()
    assert resumed.restored == len(saved["seen"]) > 0
    assert len(delivered) == undisturbed.images_used - resumed.restored  # nothing taken twice
    for mine, theirs in zip(resumed.topk, undisturbed.topk):
        np.testing.assert_array_equal(mine.values, theirs.values)
        np.testing.assert_array_equal(mine.keys, theirs.keys)
    assert resumed.probe == undisturbed.probe
    assert (resumed.images_read, resumed.images_used) == (undisturbed.images_read, undisturbed.images_used) == (N_IMAGES, N_IMAGES)
    got, want = read_activations(layout), read_activations(plain)
    assert sorted(got.image_ids) == sorted(want.image_ids) and len(got.image_ids) == N_IMAGES
    for layer in LAYERS:
        rows = dict(zip(got.image_ids, got.matrix(layer).T.tolist()))
        assert rows == dict(zip(want.image_ids, want.matrix(layer).T.tolist()))


def test_pass_b_killed_midway_resumes_per_top_image_with_the_same_crops_and_top_k(local_ray, tmp_path):
    """A pass B that dies after some batches resumes from its last save: only the top images it had
    not finished go to the actors again, images/ holds every image and crop once, and the merged
    top-K and crop activations equal an undisturbed pass B's."""
    from dnd.activations.step1 import CropMerger, crop_requests, run_pass_a
    from dnd.cropping.progress import PassBProgress
    from dnd.cropping.stage import run_pass_b
    from dnd.pipeline import plan_layers
    from dnd.probe.sources import plan_reads
    from dnd.store.layout import RunLayout

    config = config_for(tmp_path)
    config.target.batch_size = 4  # pass B batches of 4 top images, so saves fall between batches
    layers = plan_layers(config)
    read_tasks, _ = plan_reads(config.probe)
    quiet = lambda message: None  # noqa: E731
    found = run_pass_a(config, layers, read_tasks, quiet)
    requests = crop_requests(layers, found.topk, found.probe, config.step1.linear_crops)
    assert len(requests) > 12

    def merged(step1_layout, progress=None, die_after=None):
        merger = CropMerger(layers, found.topk, config.step1.top_k, config.step1.linear_crops, config.step1.crop_scope)
        progress = progress(merger) if progress else None
        calls = []

        def on_crops(keys, made_for, activations):
            calls.append(len(keys))
            if die_after is not None and len(calls) > die_after:
                raise RuntimeError("killed")
            merger.add(keys, made_for, activations)

        result = run_pass_b(config, layers, found.probe, requests, step1_layout, on_crops, progress=progress)
        return result, merger, calls

    plain = RunLayout(str(tmp_path / "plain"))
    undisturbed, reference, _ = merged(plain)

    layout = RunLayout(str(tmp_path / "killed"))
    save_every = lambda merger: PassBProgress(layout, "d", 4, 1e9, merger)  # noqa: E731
    with pytest.raises(RuntimeError, match="killed"):
        merged(layout, save_every, die_after=2)
    saved = PassBProgress(layout, "d", 4, 1e9, CropMerger(layers, found.topk, 4, "gradcam", "layer")).saved
    assert saved is not None and 0 < len(saved["done"]) < len(requests)

    resumed, merger, calls = merged(layout, save_every)
    assert resumed.resumed == len(saved["done"])
    # Only the unfinished top images were cropped again: their crops and the saved ones make all of them.
    assert sum(calls) + saved["crop_count"] == undisturbed.crop_count == resumed.crop_count
    assert resumed.crops == undisturbed.crops
    for mine, theirs in zip(merger.finish(), reference.finish()):
        np.testing.assert_array_equal(mine.keys, theirs.keys)
        np.testing.assert_allclose(mine.values, theirs.values, rtol=1e-5)
    assert set(merger.crop_activations) == set(reference.crop_activations)
    for key, pairs in reference.crop_activations.items():
        got = dict(merger.crop_activations[key])
        assert got.keys() == dict(pairs).keys()
        assert list(got.values()) == pytest.approx([dict(pairs)[k] for k in got], rel=1e-5)
    stored, want = layout.read_table("images").to_pandas(), plain.read_table("images").to_pandas()
    assert sorted(stored["image_id"]) == sorted(want["image_id"])  # every image and crop once
    assert len(stored) == len(set(stored["image_id"]))
