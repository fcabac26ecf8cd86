"""Enumerate a probing set into read tasks and read image bytes back by reference.

Every probe image gets a *reference* (``ref``) that says where its bytes live — a file URI, or
``<parquet uri>#row=<i>`` — and an id that is the hash of its bytes, so ids are stable across runs,
machines and source orderings, and the same picture in two sources is one image.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

from dnd.errors import ConfigError, StorageError
from dnd.probe.generated import SCHEME, generated_ref, parse_generated, render_ref
from dnd.store.fs import url_to_fs

ROW_MARK = "#row="


def image_id(data: bytes) -> str:
    """Content id of an image: 16 hex digits (64 bits) of its SHA-256."""
    return hashlib.sha256(data).hexdigest()[:16]


def id_key(identifier: str) -> int:
    """The id as an unsigned 64-bit integer: a cheap, total tie-break order for top-K merges."""
    return int(identifier, 16)


@dataclass(frozen=True)
class ReadTask:
    source: str
    kind: str  # "files", "parquet" or "generated" (parquet_uri then holds the gen:// URI)
    refs: tuple[str, ...] = ()
    parquet_uri: str = ""
    column: str = "image"
    row_start: int = 0
    row_stop: int = 0

    def as_row(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "refs": list(self.refs),
            "parquet_uri": self.parquet_uri,
            "column": self.column,
            "row_start": self.row_start,
            "row_stop": self.row_stop,
        }


def _source_name(source: Any) -> str:
    if source.name:
        return source.name
    if source.uri.startswith(SCHEME):
        return "gen:" + parse_generated(source.uri)[0]
    return posixpath.basename(source.uri.rstrip("/")) or source.uri


def _is_parquet(path: str) -> bool:
    return path.lower().endswith((".parquet", ".pq"))


def plan_reads(probe: Any) -> tuple[list[ReadTask], dict[str, int]]:
    """Read tasks for every source of ``probe`` (a ProbeConfig) and the image count per source."""
    tasks: list[ReadTask] = []
    counts: dict[str, int] = {}
    extensions = tuple(e.lower() for e in probe.extensions)
    for source in probe.sources:
        name = _source_name(source)
        if name in counts:  # two folders both called "images": keep their counts apart
            name = f"{name}#{len(counts) + 1}"
        if source.uri.startswith(SCHEME):
            _, n, _, _ = parse_generated(source.uri)
            n = min(n, source.limit) if source.limit else n
            step = probe.files_per_read_task
            new = [ReadTask(name, "generated", (), source.uri, "", i, min(n, i + step)) for i in range(0, n, step)]
            counts[name] = counts.get(name, 0) + n
            tasks.extend(new)
            continue
        fs, root = url_to_fs(source.uri, probe.storage_options)
        try:
            exists = fs.exists(root)
        except Exception as exc:  # credentials, DNS, a dead endpoint: say which source
            raise StorageError(f"probe source {source.uri!r} cannot be reached: {exc}") from None
        if not exists:
            raise ConfigError(f"probe source {source.uri!r} does not exist")
        if fs.isdir(root):
            files = sorted(fs.find(root))
        else:
            files = [root]
        kind = source.kind
        if kind == "auto":
            # Parquet shards often sit beside a dataset card, _SUCCESS or .crc files: Parquet and no
            # image file is a Parquet source.
            has_parquet = any(_is_parquet(f) for f in files)
            kind = "parquet" if has_parquet and not any(f.lower().endswith(extensions) for f in files) else "folder"
        if kind == "parquet":
            parquet_files = [f for f in files if _is_parquet(f)] or files
            new = _plan_parquet(fs, parquet_files, name, source, probe.files_per_read_task * 4)
        else:
            images = [f for f in files if f.lower().endswith(extensions)]
            if source.limit:
                images = images[: source.limit]
            refs = [fs.unstrip_protocol(f) if "://" in source.uri else f for f in images]
            step = probe.files_per_read_task
            new = [ReadTask(name, "files", tuple(refs[i : i + step])) for i in range(0, len(refs), step)]
        count = sum(len(t.refs) if t.kind == "files" else t.row_stop - t.row_start for t in new)
        if count == 0:
            raise ConfigError(
                f"probe source {source.uri!r} holds no images (looked for {', '.join(extensions)}"
                f"{'' if kind == 'folder' else ' in Parquet column ' + repr(source.image_column)})"
            )
        counts[name] = counts.get(name, 0) + count
        tasks.extend(new)
    return tasks, counts


def _plan_parquet(fs: Any, files: list[str], name: str, source: Any, rows_per_task: int) -> list[ReadTask]:
    import pyarrow.parquet as pq

    tasks: list[ReadTask] = []
    remaining = source.limit
    for path in files:
        try:
            with fs.open(path, "rb") as handle:
                meta = pq.ParquetFile(handle)
                names, rows = meta.schema_arrow.names, meta.metadata.num_rows
        except Exception as exc:  # a corrupt or half-uploaded shard: name it rather than a pyarrow traceback
            raise ConfigError(f"Parquet probe file {path!r} cannot be read: {type(exc).__name__}: {exc}") from None
        if source.image_column not in names:
            raise ConfigError(
                f"Parquet probe file {path!r} has no column {source.image_column!r}; its columns are {names}"
            )
        if remaining is not None:
            rows = min(rows, remaining)
            remaining -= rows
        uri = fs.unstrip_protocol(path) if "://" in source.uri else path
        for start in range(0, rows, rows_per_task):
            tasks.append(ReadTask(name, "parquet", (), uri, source.image_column, start, min(rows, start + rows_per_task)))
        if remaining is not None and remaining <= 0:
            break
    return tasks


def _image_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):  # Hugging Face datasets store images as {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


def _read_parquet_rows(uri: str, column: str, rows: Iterable[int], storage_options: dict | None) -> dict[int, bytes | None]:
    import pyarrow.parquet as pq

    wanted = sorted(set(rows))
    fs, path = url_to_fs(uri, storage_options)
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle, columns=[column])
    values = table.column(column)
    return {row: _image_bytes(values[row].as_py()) for row in wanted}


def execute_read(task: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, Any]]:
    """Read one task's images: rows of ``source, ref, data`` (``data`` None and ``error`` set on failure)."""
    rows: list[dict[str, Any]] = []
    if task["kind"] == "files":
        for ref in task["refs"]:
            rows.append(_read_file(task["source"], ref, storage_options))
    elif task["kind"] == "generated":
        for index in range(task["row_start"], task["row_stop"]):
            ref = generated_ref(task["parquet_uri"], index)
            rows.append({"source": task["source"], "ref": ref, "data": render_ref(ref), "error": None})
    else:
        wanted = range(task["row_start"], task["row_stop"])
        try:
            found = _read_parquet_rows(task["parquet_uri"], task["column"], wanted, storage_options)
        except Exception as exc:
            found = {}
            error = f"unreadable Parquet file ({exc})"
        else:
            error = "empty or non-bytes image cell"
        for row in wanted:
            data = found.get(row)
            rows.append(
                {"source": task["source"], "ref": parquet_ref(task["parquet_uri"], task["column"], row), "data": data,
                 "error": None if data else error}
            )
    return rows


def _read_file(source: str, ref: str, storage_options: dict | None) -> dict[str, Any]:
    from dnd.store.retry import with_retries

    try:
        fs, path = url_to_fs(ref, storage_options)
        data = with_retries(lambda: fs.cat_file(path), what=f"read {ref}")
        return {"source": source, "ref": ref, "data": data, "error": None if data else "empty file"}
    except Exception as exc:
        return {"source": source, "ref": ref, "data": None, "error": f"unreadable file ({exc})"}


def read_refs(refs: list[str], storage_options: dict | None = None) -> list[tuple[bytes | None, str]]:
    """``(bytes, "")`` for each reference, or ``(None, reason)`` where it cannot be read; Parquet
    rows are fetched per file."""
    out: list[tuple[bytes | None, str]] = [(None, "")] * len(refs)
    by_file: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for i, ref in enumerate(refs):
        if ref.startswith(SCHEME):
            out[i] = (render_ref(ref), "")
        elif ROW_MARK in ref:
            uri, row, column = split_parquet_ref(ref)
            by_file[(uri, column)].append((i, row))
        else:
            read = _read_file("", ref, storage_options)
            out[i] = (read["data"], "") if read["data"] else (None, read["error"] or "empty file")
    for (uri, column), items in by_file.items():
        try:
            found = _read_parquet_rows(uri, column, [row for _, row in items], storage_options)
        except Exception as exc:  # any failure to open or decode the file: each of its rows says why
            for i, _ in items:
                out[i] = (None, f"unreadable Parquet file ({exc})")
            continue
        for i, row in items:
            data = found.get(row)
            out[i] = (data, "") if data else (None, "empty or non-bytes image cell")
    return out


def parquet_ref(uri: str, column: str, row: int) -> str:
    return f"{uri}{ROW_MARK}{row}&column={column}"


def split_parquet_ref(ref: str) -> tuple[str, int, str]:
    uri, rest = ref.rsplit(ROW_MARK, 1)
    row, _, column = rest.partition("&column=")
    return uri, int(row), column or "image"
