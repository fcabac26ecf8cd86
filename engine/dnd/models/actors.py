"""The target model inside Ray Data actor pools, shared by Step 1 (both passes) and Step 3.

* :func:`prepare_images` / :func:`prepare_encoded`: decode and resize/crop images into the network's
  view (tasks, no model).
* :class:`TargetActor`: one copy of the target model and the recorder for the requested layers.
* :class:`ProbeActivations` (actor pool): one forward pass per batch, pooled activations of every
  requested layer for the requested neurons (and, on request, each map's peak).

Each actor loads its model once in ``__init__``. Batches are dicts of numpy arrays/lists; nothing here
holds more than one batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dnd.probe.sources import id_key


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


class TargetActor:
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


class ProbeActivations(TargetActor):
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
        # task and task_rows (when present) tell the driver which read tasks are finished.
        out = {name: batch[name] for name in ("image_id", "key", "ref", "source", "error", "task", "task_rows")
               if name in batch}
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
