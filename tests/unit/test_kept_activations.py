"""Kept activations written in committed parts: what a progress save records survives a crash, what
came after it does not, and a resumed writer continues where the save left off."""

from __future__ import annotations

import numpy as np

from dnd.records import LayerPlan
from dnd.store.activations import ActivationWriter, read_activations
from dnd.store.layout import RunLayout

LAYERS = [LayerPlan(name="layer4", size=8, neurons=[1, 5, 6], has_map=True),
          LayerPlan(name="fc", size=10, neurons=[0, 9], has_map=False)]


def batch(first: int, n: int) -> tuple[list[str], list[str], list[str], list[np.ndarray]]:
    ids = [f"img{i:03d}" for i in range(first, first + n)]
    values = [np.arange(first, first + n, dtype=np.float32)[:, None] * (j + 1) + np.arange(len(l.neurons))
              for j, l in enumerate(LAYERS)]
    return ids, [f"/probe/{i}.png" for i in ids], ["probe"] * n, values


def rows(layout: RunLayout, layer: str) -> dict[str, list[float]]:
    kept = read_activations(layout)
    return dict(zip(kept.image_ids, kept.matrix(layer).T.tolist()))


def test_a_crash_keeps_the_committed_parts_and_a_resumed_writer_continues(tmp_path):
    layout = RunLayout(str(tmp_path / "run"))
    writer = ActivationWriter(layout, LAYERS, flush_images=2)
    writer.add(*batch(0, 3))
    saved = writer.commit()  # what a progress save records
    assert saved == {"parts": 1, "images": 3}
    writer.add(*batch(3, 4))  # after the save: flushed to a part that is never committed
    assert writer.images == 7
    writer.abort()  # the run dies
    assert read_activations(layout) is None  # no meta: a reader never takes a partial set
    names = sorted(p.name for p in (tmp_path / "run" / "activations" / "index").iterdir())
    assert names == ["part-00000.parquet"]

    resumed = ActivationWriter(layout, LAYERS, flush_images=2, resume=saved)
    resumed.add(*batch(3, 4))  # the resumed pass A takes them again
    counts = resumed.close()
    assert counts["images"] == 7 and counts["neurons"] == 5
    expected = {f"img{i:03d}": [float(i) * 2 + k for k in range(2)] for i in range(7)}
    assert rows(layout, "fc") == expected
    assert list(read_activations(layout).image_ids) == [f"img{i:03d}" for i in range(7)]


def test_a_fresh_writer_clears_what_an_earlier_run_left(tmp_path):
    layout = RunLayout(str(tmp_path / "run"))
    old = ActivationWriter(layout, LAYERS)
    old.add(*batch(0, 5))
    old.close()
    fresh = ActivationWriter(layout, LAYERS)
    fresh.add(*batch(10, 2))
    fresh.close()
    assert sorted(rows(layout, "layer4")) == ["img010", "img011"]
