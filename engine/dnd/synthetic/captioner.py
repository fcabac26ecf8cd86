"""The ``synthetic`` captioner: describes planted-world images from their pixels alone.

It plays BLIP's part in `dnd demo` (step 2A) without weights: it finds the objects in an image,
names the colour, texture and shape of the largest ones, and says what the background looks
like — "a red circle and a blue checkered square on a noisy background". Like a real captioner it
names at most ``max_objects`` objects, the biggest first, so a small object beside large ones
goes unmentioned in the whole image and only its attention crop brings it up; and like a real
captioner it can be wrong on tiny or truncated objects. It never reads scene metadata: every
word comes from measurements on the pixels (see ``describe``), so the engine's attention crops
matter exactly as they do with BLIP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dnd.captioning.base import CAPTIONERS
from dnd.errors import ConfigError
from dnd.synthetic.world import COLORS, SMALL_LIMIT, TEXTURE_ADJECTIVES, texture_tone

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

CAPTIONER_VERSION = "2"

# The world's backgrounds are neutral mid-grays; a border pixel that looks like one is taken as
# ground when estimating the background (an object cut by a crop's edge is not).
_GROUND_CHROMA = 30.0
_GROUND_LEVELS = (85.0, 175.0)
# Colour distance (RGB) from the estimated ground above which a pixel belongs to an object. The
# ground's own noise stays under ~32, the closest object tones sit ~60 away.
_OBJECT_DISTANCE = 45.0
# Working resolution: tiny crops are enlarged so outlines have enough pixels to measure, large
# images reduced so that captioning stays fast.
_MIN_SIDE = 64
_MAX_SIDE = 160
_WORK_SIDE = 128
# An object narrower than this many working pixels after erosion has no visible texture.
_MIN_TEXTURE_PIXELS = 80


@dataclass
class SeenObject:
    """What the captioner measured about one object."""

    color: str
    shape: str
    texture: str
    small: bool
    area: float
    touches_edge: bool

    #: The object fills the frame (a crop inside it): its outline, hence its shape, is not seen.
    fills_frame: bool = False

    @property
    def phrase(self) -> str:
        if self.fills_frame:
            body = " ".join(w for w in (self.color, TEXTURE_ADJECTIVES.get(self.texture, ""), "surface") if w)
            return f"a close up of {_article(body)} {body}"
        words = ["small" if self.small else "", self.color, TEXTURE_ADJECTIVES.get(self.texture, ""), self.shape]
        body = " ".join(w for w in words if w)
        return f"{_article(body)} {body}"


def _article(text: str) -> str:
    return "an" if text[:1] in ("a", "e", "i", "o", "u") else "a"


def _lab(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


class _Palette:
    """Each named colour with its texture tone, in Lab, for nearest-colour voting."""

    def __init__(self) -> None:
        names = list(COLORS)
        rgb = [COLORS[n] for n in names] + [texture_tone(COLORS[n]) for n in names]
        self.names = names
        self.lab = _lab(np.asarray(rgb, dtype=np.float32).reshape(1, -1, 3)).reshape(-1, 3)
        self.primary = self.lab[: len(names)]
        self.tone = self.lab[len(names):]

    def name(self, lab_pixels: np.ndarray) -> str:
        d = np.linalg.norm(lab_pixels[:, None, :] - self.lab[None, :, :], axis=2)
        votes = np.bincount(d.argmin(axis=1) % len(self.names), minlength=len(self.names))
        return self.names[int(votes.argmax())]


_PALETTE: _Palette | None = None


def _palette() -> _Palette:
    global _PALETTE
    if _PALETTE is None:
        _PALETTE = _Palette()
    return _PALETTE


def _working_copy(image: "Image.Image") -> np.ndarray:
    import cv2

    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    h, w = rgb.shape[:2]
    side = max(h, w)
    if side > _MAX_SIDE:
        f = _WORK_SIDE / side
        rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    elif side < _MIN_SIDE:
        f = _MIN_SIDE / side
        rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_LINEAR)
    return rgb.astype(np.float32)


def _looks_like_ground(pixels: np.ndarray) -> np.ndarray:
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    level = (r + g + b) / 3
    return (chroma < _GROUND_CHROMA) & (level > _GROUND_LEVELS[0]) & (level < _GROUND_LEVELS[1])


def _fit_plane(ys: np.ndarray, xs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Least-squares a + b·x + c·y (normal equations; three unknowns), refitted once without the
    worst fifth of the points (stray object pixels)."""
    design = np.stack([np.ones_like(xs), xs, ys], axis=1)

    def solve(d: np.ndarray, v: np.ndarray) -> np.ndarray:
        gram = d.T @ d + np.eye(3) * 1e-9
        return np.linalg.solve(gram, d.T @ v)

    coef = solve(design, values)
    if len(values) >= 20:
        resid = np.abs(design @ coef - values)
        cut = np.partition(resid, int(0.8 * (len(resid) - 1)))[int(0.8 * (len(resid) - 1))]
        keep = resid <= cut
        if keep.sum() >= 3:
            coef = solve(design[keep], values[keep])
    return coef


def _ground(rgb: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """The estimated ground level at every pixel (h×w): a plane fitted to the ground-looking
    pixels (``ground``) of the border, or of the whole image when a tight crop leaves little
    border ground."""
    h, w = rgb.shape[:2]
    ring = np.zeros((h, w), dtype=bool)
    b = max(1, min(h, w) // 32)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    chosen = ring & ground
    if chosen.sum() < max(12, 0.25 * ring.sum()):
        chosen = ground
    if chosen.sum() < 3:
        return np.full((h, w), 128.0, dtype=np.float32)
    ys, xs = np.nonzero(chosen)
    coef = _fit_plane(ys.astype(np.float64), xs.astype(np.float64), rgb[chosen].mean(axis=1).astype(np.float64))
    yy, xx = np.mgrid[0:h, 0:w]
    return (coef[0] + coef[1] * xx + coef[2] * yy).astype(np.float32)


def _classify_shape(component: np.ndarray, soft: np.ndarray) -> str:
    """Shape from the outline: a hole makes a ring; low solidity a star, middling a cross; among
    convex outlines, the share of the enclosing circle filled tells circle (≈1), square (≈0.64)
    and triangle (≈0.41) apart."""
    import cv2

    ys, xs = np.nonzero(component)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    pad = 2
    h, w = component.shape
    y0, x0, y1, x1 = max(0, y0 - pad), max(0, x0 - pad), min(h, y1 + pad), min(w, x1 + pad)
    near = cv2.dilate(component.astype(np.uint8), np.ones((3, 3), np.uint8))[y0:y1, x0:x1]
    region = soft[y0:y1, x0:x1] * near
    # Small outlines are measured on an enlarged soft mask, so pixel steps do not pass for corners.
    f = max(1, math.ceil(96 / max(region.shape)))
    if f > 1:
        region = cv2.resize(region, (region.shape[1] * f, region.shape[0] * f), interpolation=cv2.INTER_LINEAR)
    binary = np.pad((region > 0.5).astype(np.uint8), 1)
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return "object"
    outer_idx = [i for i in range(len(contours)) if hierarchy[0][i][3] < 0]
    outer_i = max(outer_idx, key=lambda i: cv2.contourArea(contours[i]))
    outer = contours[outer_i]
    area = cv2.contourArea(outer)
    if area < 4:
        return "object"
    holes = [cv2.contourArea(contours[i]) for i in range(len(contours)) if hierarchy[0][i][3] == outer_i]
    if holes and max(holes) > 0.06 * area:
        return "ring"
    hull_area = cv2.contourArea(cv2.convexHull(outer))
    solidity = area / hull_area if hull_area > 0 else 1.0
    if solidity < 0.68:
        return "star"
    if solidity < 0.87:
        return "cross"
    _, radius = cv2.minEnclosingCircle(outer)
    fill = area / (math.pi * radius * radius) if radius > 0 else 0.0
    if fill > 0.80:
        return "circle"
    if fill > 0.52:
        return "square"
    return "triangle"


def _classify_texture(component: np.ndarray, lab: np.ndarray, color: str) -> str:
    """Texture from the pattern of the object's two tones inside its outline. Stripes have edges
    that all line up (a coherent structure tensor), oriented across the stripes; checks have
    edges in two directions, both along the axes; dots have edges in every direction."""
    import cv2

    ys, xs = np.nonzero(component)
    box = (slice(max(0, ys.min() - 2), ys.max() + 3), slice(max(0, xs.min() - 2), xs.max() + 3))
    component, lab = component[box], lab[box]
    interior = cv2.erode(component.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if interior.sum() < _MIN_TEXTURE_PIXELS:
        return "solid"
    palette = _palette()
    k = palette.names.index(color)
    d_primary = np.linalg.norm(lab - palette.primary[k], axis=2)
    d_tone = np.linalg.norm(lab - palette.tone[k], axis=2)
    tone = (d_tone < d_primary).astype(np.float32)
    share = float(tone[interior].mean())
    if share < 0.1 or share > 0.9:
        return "solid"
    smooth = cv2.GaussianBlur(tone, (3, 3), 0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)[interior]
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)[interior]
    jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    energy = jxx + jyy
    if energy <= 1e-6:
        return "solid"
    coherence = math.hypot(jxx - jyy, 2 * jxy) / energy
    if coherence > 0.55:
        angle = math.degrees(0.5 * math.atan2(2 * jxy, jxx - jyy))  # direction across the stripes
        if abs(angle) < 22.5:
            return "vertical stripes"
        if abs(angle) > 67.5:
            return "horizontal stripes"
        return "diagonal stripes"
    # sin²(2θ) of each edge's direction, weighted by its strength: 0 for edges along the axes
    # (checks), 1/2 on average for edges in every direction (the rims of dots).
    strength = gx * gx + gy * gy
    off_axis = float((4 * gx * gx * gy * gy / np.maximum(strength, 1e-9)).sum()) / energy
    return "checkerboard" if off_axis < 0.41 else "dots"


def _background_words(rgb: np.ndarray, objects_mask: np.ndarray, ground: np.ndarray) -> str | None:
    import cv2

    around = cv2.dilate(objects_mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    free = ~around & ground
    h, w = free.shape
    if free.sum() < max(40, 0.15 * h * w):
        return None
    level = rgb.mean(axis=2)
    ys, xs = np.nonzero(free)
    coef = _fit_plane(ys.astype(np.float64), xs.astype(np.float64), level[free].astype(np.float64))
    resid = level[free] - (coef[0] + coef[1] * xs + coef[2] * ys)
    if float(resid.std()) > 3.0:
        return "noisy"
    span = abs(coef[1]) * (w - 1) + abs(coef[2]) * (h - 1)
    # A gradient spans ~50 levels across a whole scene; a crop sees only a slice of it.
    if span > 0.2 * 50 * max(h, w) / 96 and span > 12:
        return "gradient"
    return "gray"


def _cut_edges(component: np.ndarray, width: int, height: int) -> int:
    """How many sides of the frame cut the object: along a side, its pixels on the frame's edge
    span more than a third of its extent. A circle cropped to its own bounding box only grazes
    the four sides (a few pixels each) and is seen whole; a crop inside an object is cut on all."""
    contacts = (
        (int(component[0].sum()), width),
        (int(component[-1].sum()), width),
        (int(component[:, 0].sum()), height),
        (int(component[:, -1].sum()), height),
    )
    return sum(touching > 0.35 * extent for touching, extent in contacts)


def describe(image: "Image.Image") -> tuple[list[SeenObject], str | None]:
    """The objects in an image, most prominent first, and the background's kind (or None when
    too little background shows)."""
    import cv2

    rgb = _working_copy(image)
    h, w = rgb.shape[:2]
    ground_like = _looks_like_ground(rgb)
    ground = _ground(rgb, ground_like)
    diff = rgb - ground[:, :, None]
    distance = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    objects_mask = distance > _OBJECT_DISTANCE
    # A soft version of the same test keeps sub-pixel outlines for measuring small shapes.
    soft = np.clip((distance - 20.0) / 50.0, 0.0, 1.0).astype(np.float32)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(objects_mask.astype(np.uint8), connectivity=8)
    lab = _lab(rgb)
    min_area = max(6.0, 0.0015 * h * w)
    seen: list[SeenObject] = []
    palette = _palette()
    for k in range(1, count):
        x, y, bw, bh, area = (int(v) for v in stats[k])
        if area < min_area:
            continue
        component = labels == k
        core = cv2.erode(component.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        pixels = lab[core] if core.sum() >= 12 else lab[component]
        color = palette.name(pixels)
        shape = _classify_shape(component, soft)
        texture = _classify_texture(component, lab, color)
        pts = np.column_stack(np.nonzero(component)[::-1]).astype(np.float32)
        _, radius = cv2.minEnclosingCircle(pts)
        small = 2 * radius / min(h, w) < SMALL_LIMIT
        edges = _cut_edges(component, bw, bh)
        fills = edges >= 3 and area > 0.6 * h * w
        seen.append(SeenObject(color, shape, texture, small, float(area), edges > 0, fills))
    # An object cut by the frame is usually a neighbour intruding into a crop, not its subject.
    seen.sort(key=lambda o: -(o.area * (0.3 if o.touches_edge else 1.0)))
    return seen, _background_words(rgb, objects_mask, ground_like)


@CAPTIONERS.register("synthetic")
class SyntheticCaptioner:
    """Captions planted-world images from their pixels, naming at most ``max_objects`` objects."""

    def __init__(self, max_objects: int = 2):
        if not isinstance(max_objects, int) or isinstance(max_objects, bool) or max_objects < 1:
            raise ConfigError(f"synthetic captioner max_objects must be a positive integer, got {max_objects!r}")
        self.max_objects = max_objects
        self.cache_key = f"synthetic-caption|v{CAPTIONER_VERSION}|max_objects={max_objects}"

    def caption_one(self, image: "Image.Image") -> str:
        objects, background = describe(image)
        # Objects much smaller than the main one are what a captioner overlooks.
        if objects:
            main = objects[0].area
            objects = [o for o in objects if o.area >= 0.04 * main][: self.max_objects]
        text = " and ".join(o.phrase for o in objects)
        if background is not None:
            text = f"{text} on a {background} background" if text else f"a {background} background"
        return text

    def caption(self, images: "list[Image.Image]") -> list[str]:
        return [self.caption_one(image) for image in images]
