"""The planted world's probing set as a generated source: ``gen://planted?n=600&seed=0&size=96``.

Image i is scene i of the biased probe design (red only on circles, small-only objects beside large
distractors ...), rendered on the fly in whichever Ray worker reads it; the metadata of the same
scenes is available to benchmarks through :func:`probe_metadata`, never to the engine.
"""

from __future__ import annotations

import io

from dnd.probe.generated import PROBE_RENDERERS


@PROBE_RENDERERS.register("planted")
def render_planted(seed: int, index: int, size: int) -> bytes:
    from dnd.synthetic.world import probe_scene, render

    buffer = io.BytesIO()
    render(probe_scene(seed, index), size).pil().save(buffer, format="PNG")
    return buffer.getvalue()


def probe_uri(n: int, seed: int = 0, size: int | None = None) -> str:
    from dnd.synthetic.world import SIZE

    return f"gen://planted?n={n}&seed={seed}&size={size or SIZE}"
