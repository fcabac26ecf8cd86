"""Attention cropping exactly as appendix A.1.1 describes it.

1. The neuron's activation map, upsampled onto the image, is scaled to 8 bits and split by Otsu's
   global threshold (OpenCV) into salient foreground and background.
2. External contours of the foreground give bounding boxes.
3. Boxes are taken largest first, up to alpha of them, keeping a box only when its IoU with every
   box already kept is below eta and its IoU with the whole map is below a cap (a crop that is
   nearly all the network saw adds nothing to D_probe). "The whole map" is the part of the image
   the map covers: after a resize and centre crop the network sees less than the whole image, and
   a box over all of that region has an IoU below 0.8 with the image itself (0.766 for a square
   image under resize-256/crop-224), so a cap against the image could never fire.

Boxes are ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Box = tuple[int, int, int, int]


def to_uint8(activation_map: np.ndarray) -> np.ndarray | None:
    """Min-max scale a map to 0..255; None for a constant (or all-NaN) map, which has no salient region."""
    values = np.asarray(activation_map, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return None
    low = values[finite].min()
    high = values[finite].max()
    if not high > low:
        return None
    scaled = np.where(finite, (values - low) / (high - low), 0.0)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def otsu_threshold(gray: np.ndarray) -> float:
    """Otsu's global threshold of an 8-bit image (OpenCV); pixels strictly above it are foreground."""
    import cv2

    threshold, _ = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(threshold)


def salient_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes of the external contours of a binary mask, largest area first."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append((int(x), int(y), int(x + w), int(y + h)))
    # Ties in area are broken by position so the choice never depends on contour order.
    boxes.sort(key=lambda b: (-(b[2] - b[0]) * (b[3] - b[1]), b[1], b[0]))
    return boxes


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def select_crops(
    boxes: Sequence[Box],
    image_size: tuple[int, int],
    max_crops: int,
    iou_threshold: float,
    whole_image_cap: float,
    min_side: int = 1,
    region: Box | None = None,
) -> list[Box]:
    """Keep up to ``max_crops`` boxes, largest first, that overlap neither each other nor the whole
    map much. ``region``: the pixels of the image the map covers (the network's view); None is the
    whole image."""
    width, height = image_size
    whole = region if region is not None else (0, 0, width, height)
    kept: list[Box] = []
    for box in boxes:
        if len(kept) >= max_crops:
            break
        if box[2] - box[0] < min_side or box[3] - box[1] < min_side:
            continue
        if iou(box, whole) >= whole_image_cap:
            continue
        if all(iou(box, other) < iou_threshold for other in kept):
            kept.append(box)
    return kept


def attention_boxes(
    activation_map: np.ndarray,
    image_size: tuple[int, int],
    region: tuple[float, float, float, float] | None = None,
    max_crops: int = 4,
    iou_threshold: float = 0.5,
    whole_image_cap: float = 0.8,
    min_side: int = 1,
) -> list[Box]:
    """Crop boxes (in original image pixels) for one neuron's map on one image.

    ``region`` is the part of the original image the network saw (after resize and centre crop);
    the map is upsampled onto that region. None means the whole image.
    """
    import cv2

    width, height = image_size
    x0, y0, x1, y1 = region if region is not None else (0.0, 0.0, float(width), float(height))
    region_w = max(1, int(round(x1 - x0)))
    region_h = max(1, int(round(y1 - y0)))
    values = np.asarray(activation_map, dtype=np.float32)
    values = np.where(np.isfinite(values), values, np.nan)
    if np.isnan(values).all():
        return []
    fill = np.nanmin(values)
    upsampled = cv2.resize(np.nan_to_num(values, nan=fill), (region_w, region_h), interpolation=cv2.INTER_LINEAR)
    gray = to_uint8(upsampled)
    if gray is None:
        return []
    threshold = otsu_threshold(gray)
    mask = gray > threshold
    ox, oy = int(round(x0)), int(round(y0))
    seen = (max(0, ox), max(0, oy), min(width, ox + region_w), min(height, oy + region_h))
    boxes = []
    for bx0, by0, bx1, by1 in salient_boxes(mask):
        box = (
            max(0, bx0 + ox), max(0, by0 + oy), min(width, bx1 + ox), min(height, by1 + oy),
        )
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    return select_crops(boxes, image_size, max_crops, iou_threshold, whole_image_cap, min_side, region=seen)


def crop_id(parent_id: str, box: Box) -> str:
    """Content id of a crop: the same parent and box always give the same crop."""
    import hashlib

    return hashlib.sha256(f"{parent_id}|{box[0]},{box[1]},{box[2]},{box[3]}".encode()).hexdigest()[:16]
