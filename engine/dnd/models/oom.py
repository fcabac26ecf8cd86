"""Out of memory on a batch: halve it and try again before giving up.

Batch sizes come from the config, but how much memory a batch takes depends on the images and the
accelerator next to it; one oversized batch must not fail a stage that smaller batches would pass.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "cuda error: out of memory" in text)


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _rows(batch: dict[str, Any]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def _slice(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {name: values[start:stop] for name, values in batch.items()}


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, dict):
        return {name: _concat([part[name] for part in parts]) for name in first}
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, list):
        return [item for part in parts for item in part]
    if type(first).__module__.startswith("torch"):
        import torch  # only here: a caller that keeps its outputs on the accelerator (pass B's maps)

        return torch.cat(parts)
    raise TypeError(f"cannot join batch outputs of type {type(first).__name__}")


def halving_on_oom(call: Callable[[dict[str, Any]], Any], batch: dict[str, Any]) -> Any:
    """``call(batch)``; on out-of-memory, the two halves separately (recursively) and their outputs joined.

    Only a single row that still runs out of memory fails, with the original error.
    """
    try:
        return call(batch)
    except Exception as exc:
        n = _rows(batch)
        if not is_out_of_memory(exc) or n <= 1:
            raise
    _free_accelerator_memory()
    half = n // 2
    return _concat([halving_on_oom(call, _slice(batch, 0, half)), halving_on_oom(call, _slice(batch, half, n))])
