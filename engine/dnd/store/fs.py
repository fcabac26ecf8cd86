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


def _is_local(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def write_atomic(fs: Any, path: str, data: bytes) -> None:
    """Write ``data`` so that a reader (or a resumed run) never sees half a file.

    An object store publishes an object only when its upload completes, so a direct write is already
    all-or-nothing there; on a local disk a killed writer would leave a truncated file, so the bytes
    go to a temporary name first and are renamed into place.
    """
    import uuid

    from dnd.store.retry import with_retries

    parent = path.rsplit("/", 1)[0]

    def write() -> None:
        if _is_local(fs):
            fs.makedirs(parent, exist_ok=True)
            temporary = f"{path}.tmp-{uuid.uuid4().hex}"
            with fs.open(temporary, "wb") as handle:
                handle.write(data)
            fs.mv(temporary, path)
        else:
            with fs.open(path, "wb") as handle:
                handle.write(data)

    with_retries(write, what=f"write {path}")


def describe_storage_error(exc: BaseException) -> str:
    """Name the likely cause of a storage failure in words a user can act on, then the raw error."""
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or "specified bucket does not exist" in lowered:
        cause = "the bucket does not exist"
    elif any(word in lowered for word in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "access denied",
                                          "forbidden", "403", "credentials", "permissionerror")):
        cause = "access was refused: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or storage_options)"
    elif any(word in lowered for word in ("could not connect", "connect timeout", "connection refused", "endpointconnectionerror",
                                          "name or service not known", "cannot connect", "connectionerror")):
        cause = "the storage endpoint cannot be reached: check endpoint_url / AWS_ENDPOINT_URL and the network"
    elif isinstance(exc, FileNotFoundError):
        cause = "the bucket or parent folder does not exist"
    else:
        return text
    return f"{cause} ({text})"
