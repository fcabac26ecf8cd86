"""The top-K of a Grad-CAM-cropped linear neuron: the best crops and the best whole images."""

import numpy as np

from dnd.activations.topk import EMPTY_KEY, StreamingTopK, holistic_and_local


def test_half_crops_half_whole_images_whatever_their_scale():
    whole = StreamingTopK(2, 4)
    whole.update(np.array([[40.0, 1.0], [38.0, 2.0], [36.0, 3.0], [35.0, 4.0], [30.0, 5.0]]),
                 np.arange(1, 6, dtype=np.uint64))
    crops = StreamingTopK(2, 2)
    # neuron 0 has three crops (the best two count); neuron 1 only one, so it keeps three whole images.
    crops.update(np.array([[20.0, np.nan], [25.0, np.nan], [10.0, 9.0]]), np.array([11, 12, 13], dtype=np.uint64))
    merged = holistic_and_local(whole, crops)
    assert merged.k == 4
    # Neuron 0: whole images 1, 2 (40, 38) and crops 12, 11 (25, 20), in activation order.
    assert merged.keys[0].tolist() == [1, 2, 12, 11]
    assert merged.values[0].tolist() == [40.0, 38.0, 25.0, 20.0]
    # Neuron 1: crop 13 (9.0) and whole images 5, 4, 3 (5, 4, 3).
    assert merged.keys[1].tolist() == [13, 5, 4, 3]


def test_empty_slots_stay_empty():
    whole = StreamingTopK(1, 4)
    whole.update(np.array([[3.0]]), np.array([7], dtype=np.uint64))
    crops = StreamingTopK(1, 2)
    merged = holistic_and_local(whole, crops)
    assert merged.keys[0].tolist() == [7, EMPTY_KEY, EMPTY_KEY, EMPTY_KEY]
    assert merged.values[0, 0] == 3.0 and np.isinf(merged.values[0, 1:]).all()
