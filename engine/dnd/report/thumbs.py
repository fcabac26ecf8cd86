"""Thumbnails for the report: small JPEGs made once and kept beside the report.

A thumbnail's name is its image's content id, so a rebuilt report reuses every thumbnail it
already has and decodes only images that are new since the last build.
"""

from __future__ import annotations

import io
from typing import Any

#: Longest side of a thumbnail in pixels: big enough to recognise a crop, small enough that a
#: page of cards loads quickly.
THUMB_SIDE = 160


def thumbnail_bytes(data: bytes, side: int = THUMB_SIDE) -> bytes:
    """A JPEG no larger than ``side`` on its longest edge, of any image Pillow can decode."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image.thumbnail((side, side), Image.BILINEAR)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
    return out.getvalue()


class ThumbnailStore:
    """The ``thumbs/`` folder of a report on any fsspec filesystem."""

    def __init__(self, fs: Any, folder: str):
        self.fs = fs
        self.folder = folder.rstrip("/")
        fs.makedirs(self.folder, exist_ok=True)
        self.present = {path.rsplit("/", 1)[-1] for path in fs.find(self.folder)}
        self.made = 0
        self.reused = 0

    @staticmethod
    def name(image_id: str) -> str:
        return f"{image_id}.jpg"

    def has(self, image_id: str) -> bool:
        return self.name(image_id) in self.present

    def add(self, image_id: str, data: bytes) -> bool:
        """Write the thumbnail of ``image_id`` unless it exists; False when the image can't be decoded."""
        name = self.name(image_id)
        if name in self.present:
            self.reused += 1
            return True
        try:
            thumb = thumbnail_bytes(data)
        except Exception:  # a corrupt stored image leaves a missing thumbnail, not a failed report
            return False
        with self.fs.open(f"{self.folder}/{name}", "wb") as handle:
            handle.write(thumb)
        self.present.add(name)
        self.made += 1
        return True
