"""Streaming top-K merge: order, ties, K larger than the probe, NaN, duplicates, batch order."""

import numpy as np
import pytest

from dnd.activations.topk import EMPTY_KEY, StreamingTopK


def keys(*values):
    return np.array(values, dtype=np.uint64)


def test_top_k_over_batches_matches_a_full_sort():
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(500, 7)).astype(np.float32)
    ids = rng.permutation(10_000)[:500].astype(np.uint64)
    state = StreamingTopK(7, 10)
    for start in range(0, 500, 37):
        state.update(acts[start : start + 37], ids[start : start + 37])
    for n in range(7):
        expected = np.argsort(-acts[:, n], kind="stable")[:10]
        assert state.values[n].tolist() == acts[expected, n].tolist()
        assert state.keys[n].tolist() == ids[expected].tolist()


def test_ties_are_broken_by_the_lower_key_whatever_the_batch_order():
    a = StreamingTopK(1, 2)
    a.update(np.array([[1.0], [1.0], [1.0]]), keys(30, 10, 20))
    b = StreamingTopK(1, 2)
    b.update(np.array([[1.0]]), keys(20))
    b.update(np.array([[1.0], [1.0]]), keys(30, 10))
    assert a.keys.tolist() == b.keys.tolist() == [[10, 20]]


def test_k_larger_than_the_probe_keeps_empty_slots():
    state = StreamingTopK(2, 5)
    state.update(np.array([[3.0, 1.0], [2.0, 4.0]]), keys(7, 8))
    assert state.values[0, :2].tolist() == [3.0, 2.0]
    assert state.keys[1, :2].tolist() == [8, 7]
    assert np.isneginf(state.values[:, 2:]).all()
    assert (state.keys[:, 2:] == EMPTY_KEY).all()
    assert sorted(state.winners().tolist()) == [7, 8]


def test_nan_activations_never_enter_and_are_counted():
    state = StreamingTopK(2, 2)
    state.update(np.array([[np.nan, 1.0], [np.nan, 2.0]]), keys(1, 2))
    assert np.isneginf(state.values[0]).all()
    assert state.nan_counts.tolist() == [2, 0]
    assert state.keys[1].tolist() == [2, 1]


def test_an_image_seen_twice_takes_one_slot():
    state = StreamingTopK(1, 3)
    state.update(np.array([[5.0], [5.0]]), keys(9, 9))
    state.update(np.array([[5.0], [1.0]]), keys(9, 4))
    assert state.keys[0, :2].tolist() == [9, 4]
    assert np.isneginf(state.values[0, 2])


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="does not match 3 neurons"):
        StreamingTopK(3, 2).update(np.zeros((2, 4)), keys(1, 2))


def test_crop_scope_neuron_keeps_only_a_neurons_own_crops():
    from dnd.activations.topk import own_crops_only

    # Layer 1's neurons 5 and 9 sit in columns 0 and 1. Crop 100 was cut from neuron 5's map, crop 101
    # from neuron 9's, crop 102 from both, crop 103 from layer 0's neuron 5 only (another layer).
    acts = np.array([[3.0, 8.0], [7.0, 2.0], [1.0, 1.5], [9.0, 9.0]], dtype=np.float32)
    made_for = [[[1, 5]], [[1, 9]], [[1, 5], [1, 9]], [[0, 5]]]
    own = own_crops_only(acts, made_for, 1, {5: 0, 9: 1})
    assert own.tolist() == [[3.0, -np.inf], [-np.inf, 2.0], [1.0, 1.5], [-np.inf, -np.inf]]

    # Through the top-K: neuron 5 ranks its own crops 100 (3.0) then 102 (1.0), although crops 101
    # and 103 activate it more; neuron 9 ranks 101 (2.0) then 102 (1.5). No slot is counted as NaN.
    state = StreamingTopK(2, 3)
    state.update(own, keys(100, 101, 102, 103))
    assert state.keys[0].tolist() == [100, 102, EMPTY_KEY]
    assert state.keys[1].tolist() == [101, 102, EMPTY_KEY]
    assert state.nan_counts.tolist() == [0, 0]
    layer = StreamingTopK(2, 3)  # crop_scope "layer": every crop of layer 1 competes for all its neurons
    layer.update(acts[:3], keys(100, 101, 102))
    assert layer.keys[0].tolist() == [101, 100, 102]
