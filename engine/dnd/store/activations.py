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
    """Writes pass A's activations as they stream by, in numbered parts. ``commit()`` closes the
    current part (pass A's progress saves record how many are committed); ``close()`` finishes the
    files and the meta. A run that dies before ``close()`` leaves no ``_meta.json``, so a reader never
    takes a partial set; ``resume`` (the committed parts and images an earlier attempt saved) keeps
    those parts and drops any later, unfinished one."""

    def __init__(self, layout: RunLayout, layers: list[LayerPlan], dtype: str = "float16", flush_images: int = 1024,
                 resume: dict[str, int] | None = None):
        import pyarrow as pa

        if dtype not in DTYPES:
            raise ValueError(f"activation dtype must be one of {DTYPES}, got {dtype!r}")
        self.layout, self.layers, self.dtype, self.flush_images = layout, layers, dtype, flush_images
        self._folders = ["index"] + [layer_folder(layer.name) for layer in layers]
        if resume is None:
            layout.remove(FOLDER)
            self._part, self.images = 0, 0
        else:
            self._part, self.images = int(resume["parts"]), int(resume["images"])
            layout.remove(FOLDER, "_meta.json")
            self._drop_parts_from(self._part)
        arrow_type = pa.float16() if dtype == "float16" else pa.float32()
        self._index_schema = pa.schema([pa.field("image_id", pa.string()), pa.field("ref", pa.string()),
                                        pa.field("source", pa.string())])
        self._layer_schemas = [pa.schema([pa.field("values", pa.list_(arrow_type, len(layer.neurons)))])
                               for layer in layers]
        self._writers: list[Any] | None = None  # the open part, once it has rows
        self._ids: list[str] = []
        self._refs: list[str] = []
        self._sources: list[str] = []
        self._values: list[list[np.ndarray]] = [[] for _ in layers]

    def _part_name(self, number: int) -> str:
        return f"part-{number:05d}.parquet"

    def _drop_parts_from(self, first: int) -> None:
        for folder in self._folders:
            path = self.layout.path(FOLDER, folder)
            if not self.layout.fs.exists(path):
                continue
            for name in self.layout.fs.find(path):
                stem = name.rsplit("/", 1)[-1]
                if stem.startswith("part-") and int(stem[5:10]) >= first:
                    self.layout.fs.rm(name)

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
        if self._writers is None:
            schemas = [self._index_schema, *self._layer_schemas]
            self._writers = [self.layout.open_writer(schema, FOLDER, folder, self._part_name(self._part))
                             for folder, schema in zip(self._folders, schemas)]
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

    def commit(self) -> dict[str, int]:
        """Every image added so far on storage in closed parts; returns what a progress save records."""
        self._flush()
        if self._writers is not None:
            for handle, writer in self._writers:
                writer.close()
                handle.close()
            self._writers = None
            self._part += 1
        return {"parts": self._part, "images": self.images}

    def close(self) -> dict[str, Any]:
        """Finish the files; returns what ``_SUCCESS`` counts (images, neurons, dtype, bytes)."""
        self.commit()
        meta = {
            "images": self.images, "dtype": self.dtype,
            "layers": [{"name": l.name, "neurons": list(l.neurons), "folder": layer_folder(l.name)} for l in self.layers],
        }
        self.layout.write_json(meta, FOLDER, "_meta.json")
        size = sum(info["size"] for info in self.layout.fs.find(self.layout.path(FOLDER), detail=True).values())
        return {"images": self.images, "neurons": sum(len(l.neurons) for l in self.layers), "dtype": self.dtype,
                "bytes": int(size)}

    def abort(self) -> None:
        """The run failed: the unfinished part goes; committed parts stay for a resumed pass A."""
        for handle, writer in self._writers or []:
            try:
                writer.close()
                handle.close()
            except Exception:  # already failing; the part is removed below either way
                pass
        self._writers = None
        self._drop_parts_from(self._part)


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
