"""Pass B's progress, saved as it goes so that a run killed inside pass B resumes per top image.

Pass B reads each top-K image once more, cuts its attention crops and scores them; on a large target
with many top images it is the second most expensive pass to repeat. Every ``output.checkpoint_images``
top images or ``output.checkpoint_seconds`` seconds the driver closes the ``images/`` part it was
writing (so the stored images and crops so far are whole files) and then writes, atomically, under
``checkpoints/`` and named by the Step 1 digest (a changed config never reuses it):
- the parts of ``images/`` committed, and the top images they finished;
- the crops cut so far and the top images that could not be read again;
- the crop merger's state: each layer's top-K with the crops taken in, and each crop's activation
  for the neurons whose maps cut it.
A resumed pass B deletes any part an attempt wrote after its last save, and sends only the top images
not finished to the actors, so every crop is cut, scored and stored once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from dnd.activations.checkpoint import CHECKPOINT_DIR
from dnd.activations.progress import discard_progress, read_progress, write_progress

if TYPE_CHECKING:
    from dnd.activations.step1 import CropMerger
    from dnd.cropping.stage import PassB
    from dnd.store.layout import RunLayout


class PassBProgress:
    """Where pass B saves its progress and when; ``saved`` is what an earlier attempt left (or None)."""

    def __init__(self, layout: RunLayout, digest: str, every_images: int, every_seconds: float, merger: CropMerger):
        self.layout, self.every_images, self.every_seconds, self.merger = layout, every_images, every_seconds, merger
        self.path = layout.path(CHECKPOINT_DIR, progress_name(digest))
        self.saved = self._load()
        self._last_images, self._last_time = 0, time.time()

    def due(self, images_done: int) -> bool:
        return (images_done - self._last_images >= self.every_images
                or time.time() - self._last_time >= self.every_seconds)

    def save(self, result: PassB, done: set[str], parts: list[str]) -> None:
        """The state after the top images in ``done``, whose rows are all in the committed ``parts``."""
        arrays: dict[str, np.ndarray] = {}
        for name, states in (("final", dict(enumerate(self.merger.final))), ("local", self.merger.local_only)):
            for i, state in states.items():
                arrays[f"{name}_values_{i}"], arrays[f"{name}_keys_{i}"] = state.values, state.keys
                arrays[f"{name}_nan_{i}"] = state.nan_counts
        meta = {
            "done": sorted(done), "parts": list(parts), "crop_count": result.crop_count,
            "unreadable": [list(pair) for pair in result.unreadable],
            "crops": [[key, c.image_id, c.parent_id, list(c.box), c.made_for] for key, c in result.crops.items()],
            "crop_activations": [[layer, position, [[int(k), float(v)] for k, v in pairs]]
                                 for (layer, position), pairs in self.merger.crop_activations.items()],
        }
        write_progress(self.layout, self.path, arrays, meta)
        self._last_images, self._last_time = len(done), time.time()

    def _load(self) -> dict[str, Any] | None:
        return read_progress(self.layout, self.path)

    def restore(self, result: PassB) -> tuple[set[str], list[str]]:
        """Put the saved state into the merger and ``result``; returns the finished top images (ids)
        and the committed parts of ``images/``."""
        from dnd.records import CropInfo

        saved = self.saved
        if saved is None:
            return set(), []
        arrays = saved["arrays"]
        for name, states in (("final", dict(enumerate(self.merger.final))), ("local", self.merger.local_only)):
            for i, state in states.items():
                state.values, state.keys = arrays[f"{name}_values_{i}"], arrays[f"{name}_keys_{i}"]
                state.nan_counts = arrays[f"{name}_nan_{i}"]
        for layer, position, pairs in saved["crop_activations"]:
            self.merger.crop_activations[(int(layer), int(position))] = [(int(k), float(v)) for k, v in pairs]
        for key, identifier, parent, box, made_for in saved["crops"]:
            result.crops[int(key)] = CropInfo(identifier, parent, [int(v) for v in box], made_for)
        result.crop_count = int(saved["crop_count"])
        result.unreadable.extend((ref, reason) for ref, reason in saved["unreadable"])
        self._last_images = len(saved["done"])
        return set(saved["done"]), list(saved["parts"])

    @staticmethod
    def discard(layout: RunLayout, digest: str) -> None:
        """Step 1 finished: its own checkpoint supersedes pass B's progress."""
        discard_progress(layout, layout.path(CHECKPOINT_DIR, progress_name(digest)))


def progress_name(digest: str) -> str:
    return f"step1-{digest}-pass-b.npz"
