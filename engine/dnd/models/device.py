"""Device and thread choice for model actors."""

from __future__ import annotations

import os


def choose_device(requested: str = "auto", num_gpus: float = 0.0) -> str:
    import torch

    if requested == "auto":
        return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return requested


def set_cpu_threads(threads: int | None, pool_size: int = 1) -> int:
    """Give torch a sensible thread count: Ray pins fractional-CPU actors to one OpenMP thread,
    which would leave most of a CPU node idle during forward passes."""
    import torch

    count = threads or max(1, (os.cpu_count() or 1) // max(1, pool_size))
    torch.set_num_threads(count)
    return count
