"""PNG bar charts for the analyses, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import io
from typing import Sequence

#: Colours of the series (before / after, or a single series).
COLOURS = ((55, 98, 160), (222, 110, 50), (90, 160, 90))


def bar_chart(categories: Sequence[str], series: dict[str, Sequence[float]], title: str,
              y_label: str = "", y_max: float | None = None) -> bytes:
    """Grouped vertical bars, one group per category and one bar per series; returns PNG bytes."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    names = list(series)
    values = [[float(v) for v in series[name]] for name in names]
    top = y_max if y_max is not None else max([v for vs in values for v in vs] + [1e-9])
    top = top if top > 0 else 1.0
    group_w = max(14 * len(names) + 10, 28)
    plot_w = max(300, group_w * len(categories))
    left, right, upper, lower = 56, 16, 40, 110
    width, height = left + plot_w + right, upper + 260 + lower
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black", font=font)
    if y_label:
        draw.text((4, 22), y_label, fill="black", font=font)
    base = upper + 260
    draw.line((left, upper, left, base), fill="black")
    draw.line((left, base, left + plot_w, base), fill="black")
    for tick in range(5):
        value = top * tick / 4
        y = base - 260 * tick / 4
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((4, y - 6), f"{value:.3g}", fill="black", font=font)
    bar_w = (group_w - 10) / max(len(names), 1)
    for g, category in enumerate(categories):
        x0 = left + g * group_w + 5
        for s, vs in enumerate(values):
            v = max(0.0, min(vs[g], top))
            draw.rectangle((x0 + s * bar_w, base - 260 * v / top, x0 + (s + 1) * bar_w - 1, base), fill=COLOURS[s % len(COLOURS)])
        # Category names are drawn vertically so many groups still fit.
        text = str(category)[:18]
        label = Image.new("RGBA", (int(draw.textlength(text, font=font)) + 2, 12), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((0, 0), text, fill="black", font=font)
        rotated = label.rotate(90, expand=True)
        image.paste(rotated, (int(x0 + group_w / 2 - 10), base + 4), rotated)
    if len(names) > 1:
        for s, name in enumerate(names):
            x = left + 10 + s * 110
            draw.rectangle((x, 24, x + 10, 34), fill=COLOURS[s % len(COLOURS)])
            draw.text((x + 14, 24), name, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write_png(data: bytes, uri: str) -> str:
    from dnd.store.fs import url_to_fs

    fs, path = url_to_fs(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(data)
    return uri
