"""Every neuron's summary activation on every probe image, kept from Step 1's pass A for faithfulness
scores (``dnd score``) and for describers that need whole activation vectors.

Under the run's URI::

    activations/_meta.json                 layers (name, neurons, folder), dtype, images; written last
    activations/index/part-00000.parquet   image_id, ref, source: one row per probe image used
    activations/<layer>/part-00000.parquet values: the layer's neurons (plan order) on that image

Row r of every file is the same image: pass A writes them in lockstep, in the order Ray delivers
batches, which is not deterministic, so readers align by ``image_id``. Memory while writing is one
buffer of ``flush_images`` images, whatever the probe's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from dnd.errors import StorageError

if TYPE_CHECKING:
    from dnd.records import LayerPlan
    from dnd.store.layout import RunLayout

FOLDER = "activations"
DTYPES = ("float16", "float32")


def layer_folder(name: str) -> str:
    # Module names may hold characters that a path or an object key should not.
    return "layer=" + quote(name, safe="._-")


class ActivationWriter:
    """Writes pass A's activations as they stream by. ``close()`` finishes the files and the meta;
    a run that dies before it leaves no ``_meta.json``, so a reader never takes a partial set."""

    def __init__(self, layout: RunLayout, layers: list[LayerPlan], dtype: str = "float16", flush_images: int = 1024):
        import pyarrow as pa

        if dtype not in DTYPES:
            raise ValueError(f"activation dtype must be one of {DTYPES}, got {dtype!r}")
        self.layout, self.layers, self.dtype, self.flush_images = layout, layers, dtype, flush_images
        layout.remove(FOLDER)
        arrow_type = pa.float16() if dtype == "float16" else pa.float32()
        self._index_schema = pa.schema([pa.field("image_id", pa.string()), pa.field("ref", pa.string()),
                                        pa.field("source", pa.string())])
        self._layer_schemas = [pa.schema([pa.field("values", pa.list_(arrow_type, len(layer.neurons)))])
                               for layer in layers]
        self._writers = [layout.open_writer(self._index_schema, FOLDER, "index", "part-00000.parquet")]
        for layer, schema in zip(layers, self._layer_schemas):
            self._writers.append(layout.open_writer(schema, FOLDER, layer_folder(layer.name), "part-00000.parquet"))
        self._ids: list[str] = []
        self._refs: list[str] = []
        self._sources: list[str] = []
        self._values: list[list[np.ndarray]] = [[] for _ in layers]
        self.images = 0

    def add(self, image_ids: list[str], refs: list[str], sources: list[str], per_layer: list[np.ndarray]) -> None:
        """One batch: its images' ids, refs and sources, and per layer an (images, neurons) array."""
        self._ids.extend(image_ids)
        self._refs.extend(refs)
        self._sources.extend(sources)
        for buffer, values in zip(self._values, per_layer):
            buffer.append(np.asarray(values, dtype=self.dtype))
        if len(self._ids) >= self.flush_images:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._ids:
            return
        index = pa.table({"image_id": self._ids, "ref": self._refs, "source": self._sources}, schema=self._index_schema)
        self._writers[0][1].write_table(index)
        for (_, writer), schema, buffer in zip(self._writers[1:], self._layer_schemas, self._values):
            values = np.concatenate(buffer)
            flat = pa.array(values.reshape(-1))
            column = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
            writer.write_table(pa.Table.from_arrays([column], schema=schema))
        self.images += len(self._ids)
        self._ids, self._refs, self._sources = [], [], []
        self._values = [[] for _ in self.layers]

    def close(self) -> dict[str, Any]:
        """Finish the files; returns what ``_SUCCESS`` counts (images, neurons, dtype, bytes)."""
        self._flush()
        for handle, writer in self._writers:
            writer.close()
            handle.close()
        meta = {
            "images": self.images, "dtype": self.dtype,
            "layers": [{"name": l.name, "neurons": list(l.neurons), "folder": layer_folder(l.name)} for l in self.layers],
        }
        self.layout.write_json(meta, FOLDER, "_meta.json")
        size = sum(info["size"] for info in self.layout.fs.find(self.layout.path(FOLDER), detail=True).values())
        return {"images": self.images, "neurons": sum(len(l.neurons) for l in self.layers), "dtype": self.dtype,
                "bytes": int(size)}

    def abort(self) -> None:
        for handle, writer in self._writers:
            try:
                writer.close()
                handle.close()
            except Exception:  # already failing; the folder is removed below either way
                pass
        self.layout.remove(FOLDER)


@dataclass
class KeptActivations:
    """A run's kept activations: the probe images (aligned rows) and each layer's neurons."""

    layout: Any
    image_ids: list[str]
    refs: list[str]
    sources: list[str]
    layers: dict[str, list[int]]
    folders: dict[str, str]
    dtype: str

    def matrix(self, layer: str) -> np.ndarray:
        """(neurons, images) float32 of ``layer``: row j is neuron ``layers[layer][j]``."""
        import pyarrow.parquet as pq

        if layer not in self.layers:
            raise StorageError(f"no kept activations for layer {layer!r}; the run kept {sorted(self.layers)}")
        parts = []
        path = self.layout.path(FOLDER, self.folders[layer])
        for name in sorted(f for f in self.layout.fs.find(path) if f.endswith(".parquet")):
            with self.layout.fs.open(name, "rb") as handle:
                column = pq.read_table(handle).column("values").combine_chunks()
            width = column.type.list_size
            parts.append(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width))
        values = np.concatenate(parts) if parts else np.zeros((0, len(self.layers[layer])))
        if values.shape[0] != len(self.image_ids):
            raise StorageError(f"kept activations of layer {layer!r} have {values.shape[0]} rows for "
                               f"{len(self.image_ids)} images; the run's activations/ is damaged")
        return np.ascontiguousarray(values.T, dtype=np.float32)


def read_activations(layout: RunLayout) -> KeptActivations | None:
    """The run's kept activations, or None when it kept none (or never finished writing them)."""
    meta = layout.read_json(FOLDER, "_meta.json")
    if meta is None:
        return None
    index = layout.read_table(FOLDER, "index").to_pydict()
    return KeptActivations(
        layout, [str(i) for i in index["image_id"]], list(index["ref"]), list(index["source"]),
        {l["name"]: list(l["neurons"]) for l in meta["layers"]}, {l["name"]: l["folder"] for l in meta["layers"]},
        meta["dtype"],
    )
