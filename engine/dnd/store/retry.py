"""Retries for transient storage errors (throttling, dropped connections, 5xx from object stores)."""

from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

T = TypeVar("T")

# Errors that mean "this will not work however often you try".
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError)


def with_retries(action: Callable[[], T], what: str, attempts: int = 4, base_delay_s: float = 0.2) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except _PERMANENT:
            raise
        except Exception:
            if attempt == attempts:
                raise
            time.sleep(base_delay_s * (2 ** (attempt - 1)) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover
