"""Pass A's progress, saved as it goes so that a run killed inside Step 1 resumes from its last save.

Pass A is the one pass over the whole probing set, the most expensive to repeat on a large target.
Every ``output.checkpoint_images`` images or ``output.checkpoint_seconds`` seconds, the driver writes
(atomically, under ``checkpoints/``, named by the Step 1 digest so a changed config never reuses it):
- each layer's running top-K (values, keys, NaN counts);
- every probe image taken so far (the winners' ids and refs, and what makes repeated bytes one image);
- the read tasks finished, and the refs already taken of tasks still in flight;
- the counts (read, skipped and why, per source) and how many kept-activation parts are committed.
A resumed pass A reads only the unfinished tasks again, and within them takes only the refs not taken
before the save, so every image counts once and the top-K equals an undisturbed run's.
"""

from __future__ import annotations

import io
import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from dnd.activations.checkpoint import CHECKPOINT_DIR
from dnd.store.fs import write_atomic

if TYPE_CHECKING:
    from dnd.activations.step1 import PassA
    from dnd.records import ProbeImage
    from dnd.store.layout import RunLayout

class PassAProgress:
    """Where pass A saves its progress and when; ``saved`` is what an earlier attempt left (or None)."""

    def __init__(self, layout: RunLayout, digest: str, every_images: int, every_seconds: float):
        self.layout, self.every_images, self.every_seconds = layout, every_images, every_seconds
        self.path = layout.path(CHECKPOINT_DIR, progress_name(digest))
        self.saved = self._load()
        self._last_images, self._last_time = 0, time.time()

    def due(self, images_read: int) -> bool:
        return (images_read - self._last_images >= self.every_images
                or time.time() - self._last_time >= self.every_seconds)

    def save(self, result: PassA, seen: dict[int, ProbeImage], per_source: dict[str, int], done: set[int],
             taken: dict[int, list[str]], kept: dict[str, int] | None) -> None:
        """Write the state after the batches taken so far; ``kept`` the activation parts committed."""
        arrays: dict[str, np.ndarray] = {}
        for i, state in enumerate(result.topk):
            arrays[f"values_{i}"], arrays[f"keys_{i}"], arrays[f"nan_{i}"] = state.values, state.keys, state.nan_counts
        meta = {
            "seen": [[key, image.image_id, image.ref, image.source] for key, image in seen.items()],
            "per_source": dict(per_source), "images_read": result.images_read,
            "skip_counts": dict(result.skip_counts), "skipped": {k: list(v) for k, v in result.skipped.items()},
            "done": sorted(done), "taken": {str(t): refs for t, refs in taken.items()}, "kept": kept,
        }
        write_progress(self.layout, self.path, arrays, meta)
        self._last_images, self._last_time = result.images_read, time.time()

    def _load(self) -> dict[str, Any] | None:
        saved = read_progress(self.layout, self.path)
        if saved is not None:
            saved["taken"] = {int(t): list(refs) for t, refs in saved["taken"].items()}
        return saved

    def restore(self, result: PassA, seen: dict[int, ProbeImage], per_source: dict[str, int]) -> tuple[set[int], dict[int, list[str]]]:
        """Put the saved state into this attempt's ``result``, ``seen`` and ``per_source``; returns the
        finished tasks and, per unfinished task, the refs already taken."""
        from dnd.records import ProbeImage

        saved = self.saved
        if saved is None:
            return set(), {}
        for i, state in enumerate(result.topk):
            state.values = saved["arrays"][f"values_{i}"]
            state.keys = saved["arrays"][f"keys_{i}"]
            state.nan_counts = saved["arrays"][f"nan_{i}"]
        for key, image_id, ref, source in saved["seen"]:
            seen[int(key)] = ProbeImage(image_id, ref, source)
        per_source.update(saved["per_source"])
        result.images_read = int(saved["images_read"])
        result.skip_counts.update(saved["skip_counts"])
        for reason, details in saved["skipped"].items():
            result.skipped[reason].extend(details)
        self._last_images = result.images_read
        return set(saved["done"]), {t: list(refs) for t, refs in saved["taken"].items()}

    @staticmethod
    def discard(layout: RunLayout, digest: str) -> None:
        """Step 1 finished: its own checkpoint supersedes pass A's progress."""
        discard_progress(layout, layout.path(CHECKPOINT_DIR, progress_name(digest)))


def progress_name(digest: str) -> str:
    return f"step1-{digest}-pass-a.npz"


# A pass's progress save, for pass A and pass B alike: named arrays and a JSON ``meta`` in one .npz,
# written whole or not at all.
def write_progress(layout: RunLayout, path: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, meta=np.array(json.dumps(meta)))
    write_atomic(layout.fs, path, buffer.getvalue())


def read_progress(layout: RunLayout, path: str) -> dict[str, Any] | None:
    """The ``meta`` of the save at ``path`` with its arrays under "arrays"; None when there is none."""
    if not layout.fs.exists(path):
        return None
    with layout.fs.open(path, "rb") as handle:
        data = np.load(io.BytesIO(handle.read()), allow_pickle=False)
        arrays = {name: data[name] for name in data.files}
    saved = json.loads(str(arrays.pop("meta")))
    saved["arrays"] = arrays
    return saved


def discard_progress(layout: RunLayout, path: str) -> None:
    if layout.fs.exists(path):
        layout.fs.rm(path)
