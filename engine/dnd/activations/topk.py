"""Streaming top-K per neuron: memory is (neurons x K) whatever the size of the probing set.

Order is by activation (highest first), ties broken by the image's 64-bit content key (lowest
first), so the result does not depend on the order in which Ray delivers batches. NaN activations
never enter the top-K; an image seen twice (the same bytes in two sources) counts once.
"""

from __future__ import annotations

import numpy as np

EMPTY_KEY = np.uint64(np.iinfo(np.uint64).max)


class StreamingTopK:
    def __init__(self, n_neurons: int, k: int):
        if k < 1:
            raise ValueError(f"top-K needs K >= 1, got {k}")
        self.k = k
        self.values = np.full((n_neurons, k), -np.inf, dtype=np.float32)
        self.keys = np.full((n_neurons, k), EMPTY_KEY, dtype=np.uint64)
        self.nan_counts = np.zeros(n_neurons, dtype=np.int64)

    @property
    def n_neurons(self) -> int:
        return self.values.shape[0]

    def update(self, activations: np.ndarray, keys: np.ndarray) -> None:
        """Merge a batch: ``activations`` (batch, neurons), ``keys`` (batch,) uint64 image keys."""
        activations = np.asarray(activations, dtype=np.float32)
        keys = np.asarray(keys, dtype=np.uint64)
        if activations.ndim != 2 or activations.shape[1] != self.n_neurons or activations.shape[0] != keys.shape[0]:
            raise ValueError(
                f"batch of shape {activations.shape} with {keys.shape[0]} keys does not match {self.n_neurons} neurons"
            )
        if activations.shape[0] == 0:
            return
        unique_keys, first = np.unique(keys, return_index=True)
        if unique_keys.shape[0] != keys.shape[0]:
            first.sort()
            activations, keys = activations[first], keys[first]
        nan = np.isnan(activations)
        self.nan_counts += nan.sum(axis=0)
        batch_values = np.where(nan, -np.inf, activations).T  # (neurons, batch)
        # A key already in a neuron's top-K (same image twice) must not take a second slot.
        duplicate = np.isin(keys, self.keys.ravel())
        if duplicate.any():
            present = (self.keys[:, :, None] == keys[None, None, :]).any(axis=1)  # (neurons, batch)
            batch_values = np.where(present, -np.inf, batch_values)
        values = np.concatenate([self.values, batch_values], axis=1)
        all_keys = np.concatenate([self.keys, np.broadcast_to(keys, (self.n_neurons, keys.shape[0]))], axis=1)
        # Empty slots and -inf candidates sort after real ones; among equals the lower key wins.
        order = np.lexsort((all_keys, -values.astype(np.float64)), axis=1)[:, : self.k]
        self.values = np.take_along_axis(values, order, axis=1)
        self.keys = np.take_along_axis(all_keys, order, axis=1)
        self.keys[~np.isfinite(self.values)] = EMPTY_KEY

    def winners(self) -> np.ndarray:
        """Unique keys that are in the top-K of at least one neuron."""
        keys = self.keys[np.isfinite(self.values)]
        return np.unique(keys)

    def copy(self) -> "StreamingTopK":
        clone = StreamingTopK(self.n_neurons, self.k)
        clone.values = self.values.copy()
        clone.keys = self.keys.copy()
        clone.nan_counts = self.nan_counts.copy()
        return clone


def own_crops_only(activations: np.ndarray, made_for: list[list[list[int]]], layer_index: int,
                   positions: dict[int, int]) -> np.ndarray:
    """Crop activations (crops, neurons of one layer) with -inf wherever a crop was not cut from that
    neuron's own map, so a neuron's D_cropped holds only its own crops (``step1.crop_scope: neuron``).
    ``made_for[c]`` lists the ``[layer index, neuron]`` whose maps made crop ``c``; ``positions`` maps a
    neuron of this layer to its column. -inf, unlike NaN, is not counted as an unreadable image."""
    values = np.asarray(activations, dtype=np.float32)
    own = np.zeros(values.shape, dtype=bool)
    for row, makers in enumerate(made_for):
        for layer, neuron in makers:
            if layer == layer_index and neuron in positions:
                own[row, positions[neuron]] = True
    return np.where(own, values, np.float32(-np.inf))


def holistic_and_local(whole: StreamingTopK, crops: StreamingTopK) -> StreamingTopK:
    """Top-K of a neuron without maps whose crops come from Grad-CAM: the best ``crops.k`` crops and
    the best whole images for the other slots (more whole images where there are fewer crops).

    A class logit counts instances, so the whole image with three small purple things outscores
    any crop of one of them, and a merged ranking would never show a crop. Taking both by
    construction keeps the paper's mix of holistic and local views (A.1.2) for these neurons.
    """
    k = whole.k
    merged = StreamingTopK(whole.n_neurons, k)
    merged.nan_counts = whole.nan_counts.copy()
    for row in range(whole.n_neurons):
        local = np.flatnonzero(np.isfinite(crops.values[row]))[: crops.k]
        n_whole = k - local.size
        values = np.concatenate([whole.values[row, :n_whole], crops.values[row, local]])
        keys = np.concatenate([whole.keys[row, :n_whole], crops.keys[row, local]])
        order = np.lexsort((keys, -values.astype(np.float64)))
        merged.values[row, : order.size] = values[order]
        merged.keys[row, : order.size] = keys[order]
    merged.keys[~np.isfinite(merged.values)] = EMPTY_KEY
    return merged
