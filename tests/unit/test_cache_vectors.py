"""The generated-activations cache hands back its vectors as float32 arrays, not as lists of Python
floats (a row holds two values per neuron: 73,728 for a ViT-B's MLPs), and takes arrays in."""

from __future__ import annotations

import numpy as np

from dnd.records import generated_activations_schema
from dnd.store.cache import ContentCache


def test_vectors_come_back_as_the_arrays_written_from_every_part(tmp_path):
    cache = ContentCache(str(tmp_path), "generated_activations", generated_activations_schema())
    written = {"a": np.arange(4, dtype=np.float32), "b": np.linspace(-1, 1, 7, dtype=np.float32),
               "c": np.array([np.inf, 0.5], dtype=np.float32)}
    with cache.writer() as writer:
        writer.add({"key": "a", "acts": written["a"]})
        writer.flush()  # a second part
        writer.add({"key": "b", "acts": written["b"]})
        writer.add({"key": "c", "acts": written["c"]})
    assert len(cache.parts()) == 2
    found = cache.lookup_vectors(["c", "a", "b", "missing"], "acts")
    assert sorted(found) == ["a", "b", "c"]
    for key, vector in found.items():
        assert isinstance(vector, np.ndarray) and vector.dtype == np.float32
        np.testing.assert_array_equal(vector, written[key])
    assert cache.stats.as_dict() == {"hits": 3, "misses": 1}
    # The row-dict lookup reads the same values.
    assert cache.lookup(["b"])["b"]["acts"] == written["b"].tolist()
