"""Pass B on an accelerator that runs out of memory: its actor halves the batch until it fits.

The actor is the real pass-B code (``AttentionCrops``), called as Ray Data would call it, without
Ray; the target model fails every forward pass above a size the way CUDA does
(``tests/support/oom_target.py``), so all three of its target-model calls meet the failure: the
top images' maps, the Grad-CAM maps of the linear layer, and the scores of the crops.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from dnd.cropping.actors import AttentionCrops
from dnd.synthetic import world

# Random weights (seeded, so both actors build the same network): unit tests load no weight file.
PLANTED = {"model": "python:dnd.synthetic.network:build", "weights": "random", "threads": 1}
CROP_OPTIONS = {"max_crops": 4, "iou_threshold": 0.5, "whole_image_cap": 0.8, "min_side": 1}
# One planted channel per image (blue, square, red, circle) and two fc logits, so every image
# gets maps on both layers and the linear layer needs Grad-CAM.
TARGETS = [[[0, 0], [1, 0]], [[0, 3], [1, 1]], [[0, 9], [1, 0]], [[0, 10], [1, 2]]]


def top_images(folder) -> dict[str, np.ndarray]:
    """A pass-B batch as the stage builds it: image id, a readable ref, the neurons it serves."""
    rng = np.random.default_rng(3)
    ids, refs = [], []
    for i in range(len(TARGETS)):
        path = folder / f"probe{i}.png"
        image = world.render(world.sample_scene(rng)).pil()  # scenes of several objects: several crops each
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue())
        ids.append(f"{i + 1:016x}")
        refs.append(str(path))
    return {"image_id": np.array(ids, dtype=object), "ref": np.array(refs, dtype=object),
            "targets": np.array([json.dumps(t) for t in TARGETS], dtype=object)}


def pass_b_actor(target: dict) -> AttentionCrops:
    return AttentionCrops(target, ["planted", "fc"], [[0, 3, 9, 10], [0, 1, 2]], "mean",
                          crop_options=CROP_OPTIONS, storage_options={}, linear_crops="gradcam")


def test_pass_b_halves_a_batch_that_runs_out_of_memory_and_gets_the_same_crops_and_scores(tmp_path):
    batch = top_images(tmp_path)
    expected = pass_b_actor(PLANTED)(batch)
    squeezed = pass_b_actor({**PLANTED, "model": "python:tests.support.oom_target:build",
                             "options": {"max_images": 2}})
    got = squeezed(batch)

    assert set(got) == set(expected)
    assert (expected["kind"] == "crop").sum() > 2, "too few crops to need halving"
    for name, values in expected.items():
        if name.startswith("act_"):
            # A matrix product sums in an order that depends on the batch's size, so a halved batch's
            # scores may differ from the whole batch's in the last bits, and in nothing more.
            np.testing.assert_allclose(got[name], values, rtol=1e-5, atol=1e-5, err_msg=name)
        elif values.dtype == object:
            assert list(got[name]) == list(values), name  # the same crops, cut the same, for the same neurons
        else:
            np.testing.assert_array_equal(got[name], values, err_msg=name)
    log = squeezed.target.module.forward_log
    failed = [images for images, out_of_memory in log if out_of_memory]
    # the four top images ran out of memory (maps, then Grad-CAM), and so did the crops
    assert failed.count(4) >= 2 and any(images > 4 for images in failed), log
    assert all(images <= 2 for images, out_of_memory in log if not out_of_memory), log


def test_pass_b_fails_with_the_original_error_when_one_image_runs_out_of_memory(tmp_path):
    batch = top_images(tmp_path)
    actor = pass_b_actor({**PLANTED, "model": "python:tests.support.oom_target:build", "options": {"max_images": 0}})
    with pytest.raises(RuntimeError, match="CUDA out of memory. Tried to allocate 2.00 GiB for 1 images"):
        actor(batch)
    assert [images for images, _ in actor.target.module.forward_log] == [4, 2, 1]
