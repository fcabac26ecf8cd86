"""Decode probe image bytes into RGB, whatever mode they come in.

Grayscale, RGBA, palette, CMYK and 16-bit images are converted; unreadable or truncated files raise
:class:`UnreadableImage` with a short reason, which the pipeline counts as a skip.
"""

from __future__ import annotations

import io
import warnings


class UnreadableImage(Exception):
    """The bytes are not a complete image we can decode; the message is the skip reason."""


def decode_rgb(data: bytes):
    from PIL import Image, ImageFile, ImageOps

    if not data:
        raise UnreadableImage("empty file")
    # Truncated files must fail loudly here rather than decode to a half-grey picture.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBomb/EXIF warnings are not errors for us
            image = Image.open(io.BytesIO(data))
            image.load()
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc).lower()
        reason = "truncated image" if "truncat" in text else "not a readable image"
        raise UnreadableImage(f"{reason} ({exc})") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF should not cost us the picture
        pass
    return to_rgb(image)


def to_rgb(image):
    """Convert any PIL mode to 8-bit RGB (16-bit and float images are rescaled to their range)."""
    import numpy as np
    from PIL import Image

    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scale = 255.0 / (high - low) if high > low else 0.0
        gray = np.rint((array - low) * scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Composite on white: transparent pixels would otherwise become black, a colour the neuron never saw.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
