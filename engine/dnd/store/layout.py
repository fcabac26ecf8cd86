"""Where a run's files live under its URI, and writing them through fsspec."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dnd.errors import StorageError
from dnd.store.fs import join, url_to_fs


@dataclass
class RunLayout:
    uri: str
    storage_options: dict = field(default_factory=dict)
    cache_uri: str | None = None
    #: Where Step 1's outputs (checkpoint, images/, activations/) live when several runs share one
    #: Step 1 (dnd compare); None: under the run's own URI.
    step1_uri: str | None = None

    def __post_init__(self) -> None:
        self.uri = self.uri.rstrip("/")
        self.fs, self.root = url_to_fs(self.uri, self.storage_options)
        self.cache = (self.cache_uri or join(self.uri, "cache")).rstrip("/")
        shared = self.step1_uri is not None and self.step1_uri.rstrip("/") != self.uri
        #: The layout holding Step 1's outputs: this one, or the shared Step 1's.
        self.step1: RunLayout = RunLayout(self.step1_uri, self.storage_options, self.cache) if shared else self

    @property
    def shares_step1(self) -> bool:
        return self.step1 is not self

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    @property
    def neurons(self) -> str:
        return self.path("neurons")

    @property
    def images(self) -> str:
        return self.path("images")

    @property
    def success(self) -> str:
        return self.path("_SUCCESS")

    def check_writable(self) -> None:
        """Fail before any model work when the output location can't be written."""
        from dnd.store.fs import describe_storage_error, protocol_of
        from dnd.store.retry import with_retries

        probe = self.path("_dnd_write_check")

        def attempt() -> None:
            # On object storage "directories" are key prefixes: makedirs would create a missing
            # bucket (s3fs does), hiding a misspelt bucket name, so only a local path gets one.
            if protocol_of(self.uri) in ("file", "local"):
                self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(probe, "wb") as handle:
                handle.write(b"ok")
            self.fs.rm(probe)

        try:
            with_retries(attempt, what=f"write to {self.uri}", attempts=2)
        except Exception as exc:
            raise StorageError(f"output location {self.uri!r} is not writable: {describe_storage_error(exc)}") from None

    def write_table(self, table: Any, *parts: str) -> str:
        import pyarrow.parquet as pq

        path = self.path(*parts)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as handle:
            pq.write_table(table, handle)
        return path

    def open_writer(self, schema: Any, *parts: str):
        import pyarrow.parquet as pq

        path = self.path(*parts)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        handle = self.fs.open(path, "wb")
        return handle, pq.ParquetWriter(handle, schema)

    def write_json(self, data: dict, *parts: str) -> None:
        from dnd.store.fs import write_atomic

        # Whole or absent: a reader must never parse half a _SUCCESS.
        write_atomic(self.fs, self.path(*parts), json.dumps(data, indent=2, sort_keys=False, default=str).encode())

    def read_json(self, *parts: str) -> dict | None:
        path = self.path(*parts)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "r") as handle:
            return json.load(handle)

    def remove(self, *parts: str) -> None:
        path = self.path(*parts)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def read_table(self, *parts: str):
        import pyarrow.parquet as pq

        path = self.path(*parts)
        if not self.fs.exists(path):
            raise StorageError(f"{join(self.uri, *parts)!r} does not exist; is {self.uri!r} a dnd run?")
        files = sorted(f for f in self.fs.find(path) if f.endswith(".parquet")) if self.fs.isdir(path) else [path]
        import pyarrow as pa

        tables = []
        for name in files:
            with self.fs.open(name, "rb") as handle:
                tables.append(pq.read_table(handle))
        return pa.concat_tables(tables) if tables else None


def open_layout(uri: str, storage_options: dict | None = None) -> tuple[RunLayout, dict | None]:
    """The run at ``uri`` as its ``_SUCCESS`` records it: its layout (its cache and, for a run that
    shares another's Step 1, where that Step 1's images and activations are) and the ``_SUCCESS``
    read for it. A run without ``_SUCCESS`` gets the default places and None."""
    plain = RunLayout(uri, storage_options or {})
    manifest = plain.read_json("_SUCCESS")
    output = ((manifest or {}).get("config") or {}).get("output") or {}
    if not output.get("cache_uri") and not output.get("step1_uri"):
        return plain, manifest
    return RunLayout(uri, storage_options or {}, output.get("cache_uri"), output.get("step1_uri")), manifest


def ray_parquet(fs: Any, paths: list[str], columns: list[str] | None = None):
    """A Ray dataset over Parquet files of an fsspec filesystem (local or object storage)."""
    import pyarrow.fs as pafs
    import ray

    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    # Fractional read tasks: a whole CPU each could wait forever behind the actors of a small cluster.
    dataset = ray.data.read_parquet(paths, filesystem=filesystem, num_cpus=0.25)
    return dataset.select_columns(columns) if columns else dataset
