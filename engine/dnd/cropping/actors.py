"""Pass B's actor: attention crops of the top-K images, scored by the same network.

For the top-K images only, it recomputes the spatial maps (or Grad-CAM maps of linear neurons), cuts
attention crops for every neuron the image is top-K for, and scores the crops with the target model.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from dnd.models.actors import TargetActor
from dnd.models.oom import halving_on_oom, is_out_of_memory
from dnd.probe.sources import read_refs


def _encode(image: Any, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if fmt == "png" else "JPEG", **({} if fmt == "png" else {"quality": 95}))
    return buffer.getvalue()


class AttentionCrops(TargetActor):
    """Pass B: attention crops of top-K images, scored by the same network.

    A row's ``targets`` (JSON list of [layer index, neuron]) says for which neurons the image is in
    the top-K; one forward pass gives the maps for all of them. Boxes shared by several neurons are
    cropped and scored once.
    """

    def __init__(self, target_config: dict, layers: list[str], neurons: list[list[int]], summary: str,
                 crop_options: dict, storage_options: dict, image_format: str = "png",
                 linear_crops: str = "none", gradcam_layer: str | None = None):
        super().__init__(target_config, layers, neurons, summary)
        self.crop_options = crop_options
        self.storage_options = storage_options
        self.image_format = image_format
        self.linear_crops = linear_crops
        self.gradcam_layer = gradcam_layer
        self.map_layers: dict[str, str] = {}  # linear layer -> the spatial layer its Grad-CAM maps live on

    def _linear_maps(self, pixels: np.ndarray, requests: dict[int, list[tuple[int, int]]]) -> dict[tuple[int, int, int], Any]:
        """Grad-CAM maps {(layer index, position, neuron): map} for linear-layer neurons (see
        ``dnd.cropping.gradcam``); empty unless ``step1.linear_crops`` is ``gradcam``."""
        from dnd.cropping.gradcam import find_map_layer
        from dnd.errors import ConfigError

        found: dict[tuple[int, int, int], Any] = {}
        if self.linear_crops != "gradcam" or not requests:
            return found
        x = self._inputs(pixels)
        for layer_index, pairs in requests.items():
            name = self.layers[layer_index]
            if name not in self.map_layers:
                self.map_layers[name] = self.gradcam_layer or find_map_layer(
                    self.target.module, name, lambda: self.target.forward(x[:1]))
            try:
                grids = self._gradcam_grids(x, name, pairs)
            except RuntimeError as exc:  # autograd cannot run through this model (in-place ops, frozen graph)
                if is_out_of_memory(exc):
                    raise  # one image that does not fit is a memory problem, not a configuration one
                raise ConfigError(
                    f"Grad-CAM maps for layer {name!r} on {self.map_layers[name]!r} failed ({exc}); "
                    "set step1.gradcam_layer to another spatial layer, or step1.linear_crops: none"
                ) from None
            for (position, neuron), grid in zip(pairs, grids):
                found[(layer_index, position, neuron)] = grid
        return found

    def _gradcam_grids(self, x: Any, layer: str, pairs: list[tuple[int, int]]) -> list[Any]:
        """Grad-CAM maps of ``layer`` for the (image position, neuron) ``pairs``, in their order.

        The backward pass keeps the autograd graph of every image it runs on, so it is the pass most
        likely to run out of memory: then the pairs are halved, each half running on its images only.
        """
        from dnd.cropping.gradcam import gradcam_maps

        def maps_of(part: dict[str, Any]) -> list[Any]:
            images = sorted({int(p) for p in part["position"]})
            local = {position: i for i, position in enumerate(images)}
            asked = [(local[int(p)], int(n)) for p, n in zip(part["position"], part["neuron"])]
            maps = gradcam_maps(self.target.module, self.target.forward, x[images], self.map_layers[layer], layer,
                                asked)
            return [maps[pair] for pair in asked]

        return halving_on_oom(maps_of, {"position": np.array([p for p, _ in pairs], dtype=np.int64),
                                        "neuron": np.array([n for _, n in pairs], dtype=np.int64)})

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from dnd.cropping.attention import attention_boxes, crop_id
        from dnd.probe.decode import UnreadableImage, decode_rgb

        rows: list[dict[str, Any]] = []
        crops: list[tuple[Any, dict[str, Any]]] = []
        reads = read_refs(list(batch["ref"]), self.storage_options)
        decoded = []
        for parent, ref, (data, reason) in zip(batch["image_id"], batch["ref"], reads):
            error = ""
            image = None
            if data is None:
                error = f"probe image could not be read again for cropping: {reason or 'no bytes'}"
            else:
                try:
                    image = decode_rgb(data)
                except UnreadableImage as exc:
                    error = str(exc)
            rows.append({"kind": "probe", "image_id": parent, "parent_id": "", "box": [0, 0, 0, 0],
                         "data": data or b"", "error": error, "made_for": "",
                         "width": image.size[0] if image else 0, "height": image.size[1] if image else 0})
            decoded.append(image)
        if self.crop_options["max_crops"] > 0:
            views = [(i, self.pre.view(img)) for i, img in enumerate(decoded) if img is not None]
            if views:
                pixels = self._stack([self._array(view) for _, (view, _) in views])
                maps = self._maps(pixels)
                linear: dict[int, list[tuple[int, int]]] = {}
                for position, (i, _) in enumerate(views):
                    for layer_index, neuron in json.loads(batch["targets"][i]):
                        if maps[self.layers[layer_index]].dim() != 4:
                            linear.setdefault(layer_index, []).append((position, neuron))
                linear_maps = self._linear_maps(pixels, linear)
                for position, (i, (_, region)) in enumerate(views):
                    image = decoded[i]
                    parent = batch["image_id"][i]
                    by_box: dict[tuple, list] = {}
                    for layer_index, neuron in json.loads(batch["targets"][i]):
                        layer_maps = maps[self.layers[layer_index]]
                        if layer_maps.dim() == 4:
                            grid = layer_maps[position, neuron].float().cpu().numpy()
                        elif (layer_index, position, neuron) in linear_maps:
                            grid = linear_maps[(layer_index, position, neuron)]
                        else:
                            continue  # a linear layer without Grad-CAM has no spatial map, hence no crops
                        for box in attention_boxes(grid, image.size, region, **self.crop_options):
                            by_box.setdefault(box, []).append([layer_index, neuron])
                    for box, made_for in by_box.items():
                        piece = image.crop(box)
                        crops.append((piece, {"kind": "crop", "image_id": crop_id(parent, box), "parent_id": parent,
                                              "box": list(box), "data": b"", "error": "",
                                              "made_for": json.dumps(made_for),
                                              "width": piece.size[0], "height": piece.size[1]}))
        n_probe = len(rows)
        for piece, row in crops:
            row["data"] = _encode(piece, self.image_format)
            rows.append(row)
        out: dict[str, Any] = {name: np.array([r[name] for r in rows], dtype=object)
                               for name in ("kind", "image_id", "parent_id", "data", "error", "made_for")}
        out["box"] = np.array([r["box"] for r in rows], dtype=np.int32).reshape(len(rows), 4)
        out["width"] = np.array([r["width"] for r in rows], dtype=np.int32)
        out["height"] = np.array([r["height"] for r in rows], dtype=np.int32)
        out["key"] = np.array([int(r["image_id"], 16) for r in rows], dtype=np.uint64)
        for i, index in enumerate(self.neuron_index):
            out[f"act_{i}"] = np.full((len(rows), len(index)), np.nan, dtype=np.float32)
        if crops:
            pixels = self._stack([self._array(self.pre.view(piece)[0]) for piece, _ in crops])
            for start in range(0, len(crops), 64):
                pooled = self._scores(pixels[start : start + 64])
                for name, values in pooled.items():
                    out[name][n_probe + start : n_probe + start + len(values)] = values
        return out

    def _maps(self, pixels: np.ndarray) -> dict[str, Any]:
        """Every requested layer's maps of the top-K images; out of memory halves the images."""
        return halving_on_oom(lambda part: self._record(part["pixels"]), {"pixels": pixels})

    def _scores(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The crops' pooled activations (``act_i``); out of memory halves the crops."""
        return halving_on_oom(lambda part: self._pooled(self._record(part["pixels"])), {"pixels": pixels})

    def _array(self, view: Any) -> np.ndarray:
        return np.asarray(self.pre.tensor(view)) if self.pre.custom is not None else self.pre.pixels(view)

    @staticmethod
    def _stack(arrays: list[np.ndarray]) -> np.ndarray:
        return np.stack(arrays)
