"""Turn a decoded RGB image into the network's input, remembering which part of the image it saw."""

from __future__ import annotations

from typing import Any

Region = tuple[float, float, float, float]


class Preprocessor:
    def __init__(self, target: Any):
        self.spec = target.input_spec
        self.custom = target.preprocess
        self.input_size = self.spec.crop if self.spec is not None else 224

    def view(self, image: Any) -> tuple[Any, Region]:
        """The resized, centre-cropped picture the network sees, and its region in the original image."""
        from PIL import Image

        width, height = image.size
        if self.spec is None:
            return image, (0.0, 0.0, float(width), float(height))
        crop = self.spec.crop
        if self.spec.resize is None:
            return image.resize((crop, crop), Image.BILINEAR), (0.0, 0.0, float(width), float(height))
        scale = self.spec.resize / min(width, height)
        new_w, new_h = max(crop, round(width * scale)), max(crop, round(height * scale))
        resized = image.resize((new_w, new_h), Image.BILINEAR)
        left = int(round((new_w - crop) / 2.0))
        top = int(round((new_h - crop) / 2.0))
        view = resized.crop((left, top, left + crop, top + crop))
        sx, sy = width / new_w, height / new_h
        return view, (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)

    def pixels(self, view: Any):
        """uint8 (3, H, W) numpy array of a view; cheap to ship between Ray workers."""
        import numpy as np

        if self.custom is not None:
            raise TypeError("a custom preprocess produces tensors directly; call tensor()")
        return np.ascontiguousarray(np.asarray(view, dtype=np.uint8).transpose(2, 0, 1))

    def normalise(self, pixels: Any):
        """float (N,3,H,W) tensor from uint8 (N,3,H,W) pixels."""
        import torch

        x = torch.as_tensor(pixels).float().div_(255.0)
        mean = torch.tensor(self.spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def tensor(self, view: Any):
        """float (3,H,W) tensor of one view."""
        if self.custom is not None:
            return self.custom(view)
        return self.normalise(self.pixels(view)[None])[0]
