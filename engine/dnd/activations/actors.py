"""Ray Data stages of Step 1.

* :func:`read_and_prepare` (tasks): read probe bytes, decode, resize/crop into the network's view.
* :class:`ProbeActivations` (actor pool): one forward pass per batch, pooled activations of every
  requested layer for the requested neurons.
* :class:`AttentionCrops` (actor pool): for the top-K images only — recompute spatial maps, cut
  attention crops for every neuron the image is top-K for, and score the crops with the same model.

Each actor loads its model once in ``__init__``. Batches are dicts of numpy arrays/lists; nothing here
holds more than one batch.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from dnd.probe.sources import execute_read, id_key, image_id, read_refs


def _encode(image: Any, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if fmt == "png" else "JPEG", **({} if fmt == "png" else {"quality": 95}))
    return buffer.getvalue()


def read_and_prepare(tasks: dict[str, Any], input_spec: Any, preprocess: Any, storage_options: dict) -> dict[str, Any]:
    """One read task → a batch of prepared probe images (``pixels``) with their ids and skip reasons."""
    rows: list[dict[str, Any]] = []
    for i in range(len(tasks["kind"])):
        task = {name: tasks[name][i] for name in tasks}
        task["refs"] = list(task["refs"])
        rows.extend(execute_read(task, storage_options))
    ids = [image_id(row["data"]) if row["data"] else "" for row in rows]
    return prepare_images(
        ids, [row["data"] for row in rows], [row["error"] for row in rows], input_spec, preprocess,
        refs=[row["ref"] for row in rows], sources=[row["source"] for row in rows],
    )


def prepare_encoded(batch: dict[str, Any], input_spec: Any, preprocess: Any) -> dict[str, Any]:
    """A batch of already-identified encoded images (``image_id``, ``data``) → network inputs."""
    n = len(batch["image_id"])
    return prepare_images(list(batch["image_id"]), list(batch["data"]), [None] * n, input_spec, preprocess)


def prepare_images(ids: list[str], datas: list[Any], errors: list[str | None], input_spec: Any, preprocess: Any,
                   refs: list[str] | None = None, sources: list[str] | None = None) -> dict[str, Any]:
    """Decode and resize/crop each image into the network's view; failures keep their reason."""
    from dnd.models.preprocess import Preprocessor
    from dnd.models.target import TargetModel
    from dnd.probe.decode import UnreadableImage, decode_rgb

    pre = Preprocessor(TargetModel(module=None, input_spec=input_spec, preprocess=preprocess))
    out_errors, pixels = [], []
    for data, error in zip(datas, errors):
        array = None
        if data is not None and len(data) and not error:
            try:
                view, _ = pre.view(decode_rgb(bytes(data)))
                array = np.asarray(pre.tensor(view)) if pre.custom is not None else pre.pixels(view)
            except UnreadableImage as exc:
                error = str(exc)
            except Exception as exc:  # a preprocess that fails on one image must not fail the run
                error = f"preprocessing failed ({type(exc).__name__}: {exc})"
        elif not error:
            error = "empty file"
        out_errors.append(error or "")
        pixels.append(array)
    shapes = {a.shape for a in pixels if a is not None}
    if len(shapes) > 1:
        raise ValueError(f"preprocess produced differently shaped inputs {sorted(shapes)}; it must resize to one size")
    if shapes:
        blank = np.zeros(next(iter(shapes)), dtype=next(a for a in pixels if a is not None).dtype)
    else:
        blank = np.zeros((3, pre.input_size, pre.input_size), dtype=np.uint8)
    n = len(ids)
    return {
        "image_id": np.array([str(i) for i in ids], dtype=object),
        "key": np.array([id_key(str(i)[:16]) if i else 0 for i in ids], dtype=np.uint64),
        "ref": np.array(refs if refs is not None else [""] * n, dtype=object),
        "source": np.array(sources if sources is not None else [""] * n, dtype=object),
        "error": np.array(out_errors, dtype=object),
        "pixels": np.stack([a if a is not None else blank for a in pixels]) if n else np.zeros((0, *blank.shape), blank.dtype),
    }


class _TargetActor:
    """Holds one copy of the target model and the recorder for the requested layers."""

    def __init__(self, target_config: dict, layers: list[str], neurons: list[list[int]], summary: str):
        from dnd.config import TargetConfig
        from dnd.models.device import choose_device, set_cpu_threads
        from dnd.models.inference import optimise_for_inference
        from dnd.models.preprocess import Preprocessor
        from dnd.models.recorder import LayerRecorder
        from dnd.models.target import build_target

        config = TargetConfig.model_validate(target_config)
        self.device = choose_device(config.device, config.num_gpus)
        if self.device == "cpu":
            set_cpu_threads(config.threads, config.pool_size)
        self.target = build_target(config.model, config.weights, config.checkpoint, config.options)
        self.target.module.to(self.device)
        optimise_for_inference(self.target.module, layers)
        self.pre = Preprocessor(self.target)
        self.layers = layers
        self.recorder = LayerRecorder(self.target, layers)
        self.summary = summary
        import torch

        self.neuron_index = [torch.as_tensor(n, dtype=torch.long, device=self.device) for n in neurons]

    def _inputs(self, pixels: np.ndarray):
        import torch

        if pixels.dtype == np.uint8:
            x = self.pre.normalise(pixels)
        else:
            x = torch.as_tensor(pixels).float()
        return x.to(self.device)

    def _record(self, pixels: np.ndarray) -> dict[str, Any]:
        from dnd.models.recorder import neuron_maps

        outputs = self.recorder(self._inputs(pixels))
        return {name: neuron_maps(outputs[name], name) for name in self.layers}

    def _pooled(self, maps: dict[str, Any], peaks: bool = False) -> dict[str, np.ndarray]:
        """``act_i``: the run's summary of each requested neuron's map in layer i; with ``peaks``
        also ``peak_i``, the map's maximum (the value itself for a layer without maps)."""
        from dnd.models.recorder import summarize

        pooled = {}
        for i, name in enumerate(self.layers):
            index = self.neuron_index[i]
            pooled[f"act_{i}"] = summarize(maps[name], self.summary).index_select(1, index).float().cpu().numpy()
            if peaks:
                pooled[f"peak_{i}"] = summarize(maps[name], "max").index_select(1, index).float().cpu().numpy()
        return pooled


class ProbeActivations(_TargetActor):
    """Pass A: pooled activations of every probe image (skipped images carry NaN and their reason).

    With ``peaks`` each row also carries ``peak_i``, every neuron's map maximum: Step 3's parsimony
    compares concepts by it, because a spatial mean grows with the drawn object's area.
    """

    def __init__(self, target_config: dict, layers: list[str], neurons: list[list[int]], summary: str,
                 peaks: bool = False):
        super().__init__(target_config, layers, neurons, summary)
        self.peaks = peaks

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        out = {name: batch[name] for name in ("image_id", "key", "ref", "source", "error")}
        n = len(ok)
        for i, index in enumerate(self.neuron_index):
            out[f"act_{i}"] = np.full((n, len(index)), np.nan, dtype=np.float32)
            if self.peaks:
                out[f"peak_{i}"] = np.full((n, len(index)), np.nan, dtype=np.float32)
        if ok.any():
            from dnd.models.oom import halving_on_oom  # out of memory: halve the batch, retry

            pooled = halving_on_oom(lambda part: self._pooled(self._record(part["pixels"]), self.peaks),
                                    {"pixels": batch["pixels"][ok]})
            for name, values in pooled.items():
                out[name][ok] = values
        return out


class AttentionCrops(_TargetActor):
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
        from dnd.cropping.gradcam import find_map_layer, gradcam_maps
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
                maps = gradcam_maps(self.target.module, self.target.forward, x, self.map_layers[name], name, pairs)
            except RuntimeError as exc:  # autograd cannot run through this model (in-place ops, frozen graph)
                raise ConfigError(
                    f"Grad-CAM maps for layer {name!r} on {self.map_layers[name]!r} failed ({exc}); "
                    "set step1.gradcam_layer to another spatial layer, or step1.linear_crops: none"
                ) from None
            for (position, neuron), grid in maps.items():
                found[(layer_index, position, neuron)] = grid
        return found

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
                maps = self._record(pixels)
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
                pooled = self._pooled(self._record(pixels[start : start + 64]))
                for name, values in pooled.items():
                    out[name][n_probe + start : n_probe + start + len(values)] = values
        return out

    def _array(self, view: Any) -> np.ndarray:
        return np.asarray(self.pre.tensor(view)) if self.pre.custom is not None else self.pre.pixels(view)

    @staticmethod
    def _stack(arrays: list[np.ndarray]) -> np.ndarray:
        return np.stack(arrays)
