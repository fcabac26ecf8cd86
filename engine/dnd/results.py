"""Reading a finished (or unfinished) run back."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from dnd.errors import StorageError
from dnd.store.layout import open_layout


class Results:
    """A run at ``uri``: ``neurons`` (pandas, one row per layer and neuron), ``manifest`` (_SUCCESS)."""

    def __init__(self, uri: str, storage_options: dict | None = None):
        self.uri = uri
        # _SUCCESS is read once: it says where the run's cache and Step 1 are, and is the manifest.
        self.layout, self._success = open_layout(uri, storage_options)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        data = self._success if self._success is not None else self.layout.read_json("_SUCCESS")
        if data is None:
            raise StorageError(f"{self.uri!r} has no _SUCCESS: the run is unfinished or this is not a dnd run")
        return data

    @property
    def complete(self) -> bool:
        return self.layout.read_json("_SUCCESS") is not None

    @cached_property
    def neurons(self):
        from dnd.store.neurons import read_neurons

        return read_neurons(self.layout).to_pandas()  # every part, in row order

    def images(self, ids: list[str] | None = None):
        """The images table (probe top images and crops) as pandas, optionally only ``ids``."""
        table = self.layout.step1.read_table("images")
        frame = table.to_pandas()
        if ids is not None:
            frame = frame[frame["image_id"].isin(set(ids))]
        return frame.drop_duplicates("image_id")

    def __repr__(self) -> str:
        return f"Results({self.uri!r})"
