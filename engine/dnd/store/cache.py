"""Content-addressed caches of model outputs (captions, LLM answers, generated images, embeddings).

A cache entry's key is the hash of the backend's ``cache_key`` (model id and every output-affecting
parameter) and the input, so a rerun of the same config recomputes nothing and a changed parameter
recomputes only what it touches. Entries live as Parquet part files under ``<cache>/<name>/``;
each run appends one new part, so concurrent or interrupted runs never corrupt earlier entries.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from dnd.store.fs import join, url_to_fs, write_atomic


def content_key(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:32]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}


@dataclass
class ContentCache:
    """One named cache table: ``key`` (string) plus the columns of ``schema``."""

    root: str
    name: str
    schema: Any
    storage_options: dict = field(default_factory=dict)
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self.fs, base = url_to_fs(self.root, self.storage_options)
        self.path = join(base, self.name)

    def parts(self) -> list[str]:
        """The table's Parquet part files (a reader of the whole table, e.g. a Ray dataset, reads these)."""
        if not self.fs.exists(self.path):
            return []
        return sorted(f for f in self.fs.find(self.path) if f.endswith(".parquet"))

    def _matching(self, wanted: set[str], columns: list[str] | None) -> Iterator[Any]:
        """Each part's rows whose key is in ``wanted`` (``key`` and ``columns``; None: all), as Arrow tables."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if not wanted:
            return
        wanted_array = pa.array(sorted(wanted), type=pa.string())
        for part in self.parts():
            with self.fs.open(part, "rb") as handle:
                table = pq.read_table(handle, columns=None if columns is None else ["key", *columns])
            yield table.filter(pc.is_in(table.column("key"), value_set=wanted_array))

    def _counted(self, wanted: set[str], found: dict[str, Any]) -> dict[str, Any]:
        self.stats.hits += len(found)
        self.stats.misses += len(wanted) - len(found)
        return found

    def lookup(self, keys: Iterable[str], columns: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Cached rows for ``keys``; counts hits and misses."""
        wanted = set(keys)
        found: dict[str, dict[str, Any]] = {}
        for table in self._matching(wanted, columns):
            for row in table.to_pylist():
                found.setdefault(row["key"], row)
        return self._counted(wanted, found)

    def lookup_vectors(self, keys: Iterable[str], column: str) -> dict[str, Any]:
        """Cached float vectors of a list column for ``keys``, as float32 numpy arrays; counts hits and
        misses as :meth:`lookup` does. A cached row of the target's activations on a generated image holds
        two values for every neuron (73,728 for a ViT-B's MLPs); through ``lookup`` each would become a
        Python float of ~32 bytes, 2.4 MB a row."""
        import numpy as np

        wanted = set(keys)
        found: dict[str, Any] = {}
        for table in self._matching(wanted, [column]):
            vectors = table.column(column)
            for i, key in enumerate(table.column("key").to_pylist()):
                if key not in found:
                    found[key] = np.asarray(vectors[i].values.to_numpy(zero_copy_only=False), dtype=np.float32)
        return self._counted(wanted, found)

    def writer(self) -> "CacheWriter":
        return CacheWriter(self)


class CacheWriter:
    """Buffers new entries and writes them as one part file (plus more every ``flush_rows``)."""

    def __init__(self, cache: ContentCache, flush_rows: int = 2000, flush_seconds: float = 20.0):
        self.cache = cache
        self.rows: list[dict[str, Any]] = []
        self.flush_rows = flush_rows
        # A slow stage (a GPU captioner, a diffusion model) also persists on a clock, so a crash
        # loses at most this many seconds of model calls, not a whole stage.
        self.flush_seconds = flush_seconds
        self.flushed_at = time.monotonic()
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.flush_rows or time.monotonic() - self.flushed_at >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.rows, schema=self.cache.schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path = join(self.cache.path, f"part-{uuid.uuid4().hex}.parquet")
        # All-or-nothing: a run killed mid-write must not leave a part that breaks every later lookup.
        write_atomic(self.cache.fs, path, sink.getvalue().to_pybytes())
        self.written += len(self.rows)
        self.rows = []
        self.flushed_at = time.monotonic()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        # Whatever was computed before a failure is kept: a rerun must not pay for it twice.
        self.flush()
