"""Probing images made on the fly: ``gen://NAME?n=2000&seed=0&size=64``.

They let smoke runs, tests and benchmarks run with no data set on disk, and they stream like any
other source (each read task renders its own slice). Image ``i`` depends only on (seed, i), so ids
are stable across runs. ``shapes`` is built in; other renderers register in ``PROBE_RENDERERS``.
"""

from __future__ import annotations

import io
from typing import Callable
from urllib.parse import parse_qs, urlparse

from dnd.errors import ConfigError
from dnd.registry import Registry

SCHEME = "gen://"

PROBE_RENDERERS: Registry[Callable[[int, int, int], bytes]] = Registry("generated probe renderer")

def renderer(name: str) -> Callable[[int, int, int], bytes]:
    if name not in PROBE_RENDERERS.names():
        # Renderers of other modules register when the backends load (also inside Ray workers).
        from dnd.backends import load_backends

        load_backends()
    return PROBE_RENDERERS.get(name)


def parse_generated(uri: str) -> tuple[str, int, int, int]:
    """(renderer, n, seed, size) of a gen:// URI."""
    parsed = urlparse(uri)
    query = parse_qs(parsed.query)
    name = parsed.netloc or parsed.path.strip("/")
    try:
        n = int(query.get("n", ["200"])[0])
        seed = int(query.get("seed", ["0"])[0])
        size = int(query.get("size", ["64"])[0])
    except ValueError:
        raise ConfigError(f"generated probe {uri!r}: n, seed and size must be integers") from None
    if n < 1 or size < 8:
        raise ConfigError(f"generated probe {uri!r}: expected n >= 1 and size >= 8")
    renderer(name)
    return name, n, seed, size


def generated_ref(uri: str, index: int) -> str:
    return f"{uri}#i={index}"


def render_ref(ref: str) -> bytes:
    uri, _, index = ref.rpartition("#i=")
    name, _, seed, size = parse_generated(uri)
    return renderer(name)(seed, int(index), size)


@PROBE_RENDERERS.register("shapes")
def render_shapes(seed: int, index: int, size: int) -> bytes:
    """A few coloured rectangles and ellipses on a textured background, PNG-encoded."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index])
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        w, h = rng.integers(size // 8, size // 2, size=2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x), int(y), int(x + w), int(y + h)], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
