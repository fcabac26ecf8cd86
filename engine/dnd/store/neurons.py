"""A run's ``neurons/`` folder: the rows written as several Parquet parts, read back in their order.

A run of tens of thousands of neurons (every MLP neuron of a ViT-B is 36,864) would hold the whole
table twice over if it were built at once: every row as a dict, then as Arrow. The rows are instead
written part by part, each part one layer's run of at most :data:`PART_ROWS` rows, so the driver
holds one part at a time. Parts are named ``part-NNNNN.parquet`` in row order; readers concatenate
them sorted by name, which gives back the rows in the order they were written.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    from dnd.records import NeuronRow
    from dnd.store.layout import RunLayout

FOLDER = "neurons"

#: Most rows per part. A row with its top images, crops, captions and candidates is a few kB as
#: Python objects, so a part of 2,000 stays at a few MB while a 37k-neuron run needs ~20 parts.
PART_ROWS = 2000


def part_name(number: int) -> str:
    # Five digits keep the names' sorted order the row order for up to 100,000 parts.
    return f"part-{number:05d}.parquet"


def part_slices(layers: Sequence[str], part_rows: int = PART_ROWS) -> list[tuple[int, int]]:
    """(start, stop) of each part for rows whose layers are ``layers``, in order: a part never spans
    two layers (a reader or ``dnd score`` working on one layer opens only its parts), and a layer's
    run of n rows is cut into ceil(n / part_rows) parts of near-equal size, not into full parts and
    a small remainder."""
    if part_rows < 1:
        raise ValueError(f"part_rows must be at least 1, got {part_rows}")
    slices: list[tuple[int, int]] = []
    start = 0
    while start < len(layers):
        stop = start
        while stop < len(layers) and layers[stop] == layers[start]:
            stop += 1
        count = math.ceil((stop - start) / part_rows)
        for k in range(count):
            slices.append((start + (stop - start) * k // count, start + (stop - start) * (k + 1) // count))
        start = stop
    return slices


def write_neurons(layout: RunLayout, rows: Sequence[NeuronRow], part_rows: int = PART_ROWS) -> list[str]:
    """Replace ``layout``'s ``neurons/`` with ``rows``, in their order, one part at a time; returns
    the parts' paths. Only one part's dicts and Arrow table exist at any moment."""
    import pyarrow as pa

    from dnd.records import neurons_schema

    schema = neurons_schema()
    layout.remove(FOLDER)
    written = []
    # No rows still gives one (empty) part, so the run reads back as a table of no neurons.
    slices = part_slices([row.layer for row in rows], part_rows) or [(0, 0)]
    for number, (start, stop) in enumerate(slices):
        table = pa.Table.from_pylist([asdict(row) for row in rows[start:stop]], schema=schema)
        written.append(layout.write_table(table, FOLDER, part_name(number)))
    return written


def neuron_parts(layout: RunLayout) -> list[str]:
    """The paths of ``neurons/``'s parts in row order (empty when there is no ``neurons/``)."""
    path = layout.path(FOLDER)
    if not layout.fs.exists(path):
        return []
    # A temporary file of a rewrite in progress (``.parquet.tmp``) is not a part.
    return sorted(f for f in layout.fs.find(path) if f.endswith(".parquet"))


def read_part(layout: RunLayout, path: str, columns: list[str] | None = None):
    """One part as an Arrow table: only ``columns`` of them it has (a run written before a column
    was added to the schema lacks it), or every column."""
    import pyarrow.parquet as pq

    with layout.fs.open(path, "rb") as handle:
        part = pq.ParquetFile(handle)
        if columns is not None:
            columns = [name for name in columns if name in part.schema_arrow.names]
        return part.read(columns=columns)


def iter_neurons(layout: RunLayout, columns: list[str] | None = None) -> Iterator[Any]:
    """Each part of ``neurons/`` as an Arrow table (only ``columns``), in row order."""
    for path in neuron_parts(layout):
        yield read_part(layout, path, columns)


def read_neurons(layout: RunLayout, columns: list[str] | None = None):
    """Every row of ``neurons/`` as one Arrow table (only ``columns``), in row order; None when the
    run has no parts."""
    import pyarrow as pa

    from dnd.errors import StorageError

    if not layout.fs.exists(layout.path(FOLDER)):
        raise StorageError(f"{layout.path(FOLDER)!r} does not exist; is {layout.uri!r} a dnd run?")
    tables = list(iter_neurons(layout, columns))
    return pa.concat_tables(tables) if tables else None


def rewrite_neurons(layout: RunLayout, change: Callable[[list[dict[str, Any]]], Iterable[dict[str, Any]] | None]) -> int:
    """Rewrite ``neurons/`` part by part: ``change`` gets a part's rows as dicts, edits them in
    place (or returns new ones), and the part is written back under its own name. Each part is
    written whole over the old one (``write_atomic``), and every part keeps its rows, so a crash
    between parts leaves every row exactly once (some rewritten, some not). Returns the rows seen."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dnd.records import neurons_schema
    from dnd.store.fs import write_atomic

    schema = neurons_schema()
    seen = 0
    for path in neuron_parts(layout):
        rows = read_part(layout, path).to_pylist()
        changed = change(rows)
        rows = rows if changed is None else list(changed)
        seen += len(rows)
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
        # Whole or not at all: on a local disk a temporary file renamed over the part (not read as a
        # part meanwhile: its name does not end in .parquet), on an object store one upload.
        write_atomic(layout.fs, path, buffer.getvalue().to_pybytes())
    return seen
