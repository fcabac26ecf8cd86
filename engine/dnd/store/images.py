"""Reading back a run's stored top images and crops (``images/``), for the stages after Step 1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dnd.store.layout import RunLayout


def _keep_ids(batch: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    mask = np.isin(batch["image_id"].astype(str), np.asarray(wanted, dtype=str))
    return {name: values[mask] for name, values in batch.items()}


def stored_images(layout: RunLayout, ids: set[str], columns: list[str] | None = None):
    """A Ray dataset of this run's stored top images and crops restricted to ``ids``."""
    from dnd.store.layout import ray_parquet

    step1 = layout.step1  # a shared Step 1 keeps the images for every run that shares it
    parts = sorted(f for f in step1.fs.find(step1.images) if f.endswith(".parquet"))
    dataset = ray_parquet(step1.fs, parts, columns=columns or ["image_id", "data"])
    return dataset.map_batches(_keep_ids, fn_kwargs={"wanted": sorted(ids)}, batch_format="numpy", num_cpus=0.25)
