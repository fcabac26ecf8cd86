"""fsspec access to local paths and object storage (s3://, gs://, file://, memory://)."""

from __future__ import annotations

import posixpath
from typing import Any

from dnd.errors import StorageError


def url_to_fs(uri: str, storage_options: dict | None = None) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open storage location {uri!r}: {exc}") from None


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI without touching its scheme (os.path.join would on Windows)."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return posixpath.join(uri, *parts)


def open_uri(uri: str, mode: str = "rb", storage_options: dict | None = None):
    fs, path = url_to_fs(uri, storage_options)
    return fs.open(path, mode)


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    fs, path = url_to_fs(uri, storage_options)
    return fs.cat_file(path)


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"
