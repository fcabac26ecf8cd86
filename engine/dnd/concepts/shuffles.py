"""The caption orders behind a neuron's N candidate concepts (paper 3.2, Step 2B).

The paper asks the LLM N times (N = 5) for a summary of the same K captions. Presenting the
captions in a different order each time gives the N answers their diversity without relying on
sampling temperature, and seeding the orders from (run seed, neuron key) keeps them identical
across reruns and resumed runs, so the content-addressed LLM cache is hit instead of re-asked.
"""

from __future__ import annotations

import hashlib
import random

from dnd.errors import ConfigError

# Enough redraws to make a repeat order unlikely when distinct ones exist, few enough to stay
# cheap when they do not (K! < N).
_MAX_REDRAWS = 16


def order_seed(seed: int, key: str) -> int:
    """A 64-bit seed from (seed, key) that is the same in every process: Python's ``hash`` of a
    str is salted per interpreter, so it cannot be used for reproducible shuffles."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def summary_orders(captions: list[str], n: int, seed: int, key: str) -> list[list[str]]:
    """``n`` orders of ``captions`` for one neuron, the first being the given order.

    The rest are seeded permutations, distinct from each other and from the first while enough
    distinct orders exist; ``key`` names the neuron (e.g. "layer4/17") so neurons that share a
    caption list still get different orders.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of summaries per neuron must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"summary shuffle seed must be an integer, got {seed!r}")
    if not isinstance(key, str):
        raise ConfigError(f"summary shuffle key must be a string naming the neuron, got {key!r}")
    captions = list(captions)

    rng = random.Random(order_seed(seed, key))
    orders = [captions]
    # Compare by position so duplicate captions do not make distinct orders look equal.
    seen = {tuple(range(len(captions)))}
    for _ in range(n - 1):
        positions = list(range(len(captions)))
        for _ in range(_MAX_REDRAWS):
            rng.shuffle(positions)
            if tuple(positions) not in seen:
                break
        seen.add(tuple(positions))
        orders.append([captions[i] for i in positions])
    return orders
