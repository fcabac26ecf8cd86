"""Step 1's checkpoint: its result saved under the run prefix, so a resumed run skips it.

Step 1 is the one stage whose output is not a content-addressed cache: it is a streaming top-K over
the whole probing set. Once pass B has finished (top images and crops are in ``images/``), the
Step1Result is written as one ``.npz`` under ``checkpoints/``, named by a digest of everything that
changes it (target, layers, neurons, probe set, Step 1 settings, image encoding). A run that finds
the file for its digest loads it instead of running the target model over the probing set again.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from dnd.store.cache import content_key
from dnd.store.fs import join, write_atomic

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.store.layout import RunLayout

CHECKPOINT_DIR = "checkpoints"


def step1_digest(config: RunConfig) -> str:
    """What Step 1's result depends on; credentials and pool sizes do not change it."""
    probe = config.probe.model_dump(mode="json", exclude={"storage_options", "read_concurrency", "files_per_read_task"})
    target = config.target.model_dump(mode="json", include={"model", "weights", "checkpoint", "options"})
    parts = {
        "target": target, "layers": config.layers, "neurons": config.model_dump(mode="json")["neurons"],
        "probe": probe, "step1": config.step1.model_dump(mode="json"), "image_format": config.output.image_format,
    }
    return content_key("step1", json.dumps(parts, sort_keys=True, default=str))


def _name(digest: str) -> str:
    return f"step1-{digest}.npz"


def save_step1(layout: RunLayout, digest: str, result: Any) -> str:
    """Write ``result`` (a Step1Result) as the checkpoint for ``digest``; returns its path."""
    arrays: dict[str, np.ndarray] = {}
    for i, state in enumerate(result.topk):
        arrays[f"values_{i}"] = state.values
        arrays[f"keys_{i}"] = state.keys
        arrays[f"nan_{i}"] = state.nan_counts
    meta = {
        "layers": [vars(layer) for layer in result.layers],
        "k": [state.k for state in result.topk],
        "probe": [[key, vars(image)] for key, image in result.probe.items()],
        "crops": [[key, vars(crop)] for key, crop in result.crops.items()],
        "crop_activations": [[list(k), [[int(c), float(a)] for c, a in v]] for k, v in result.crop_activations.items()],
        "counts": result.counts, "skipped": result.skipped, "timings": result.timings,
    }
    arrays["meta"] = np.array(json.dumps(meta, default=str))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = layout.path(CHECKPOINT_DIR, _name(digest))
    write_atomic(layout.fs, path, buffer.getvalue())
    return path


def load_step1(layout: RunLayout, digest: str) -> Any | None:
    """The Step1Result saved for ``digest``, or None when this run has not finished Step 1 yet."""
    from dnd.activations.topk import StreamingTopK
    from dnd.records import CropInfo, LayerPlan, ProbeImage, Step1Result

    path = layout.path(CHECKPOINT_DIR, _name(digest))
    if not layout.fs.exists(path):
        return None
    with layout.fs.open(path, "rb") as handle:
        data = np.load(io.BytesIO(handle.read()), allow_pickle=False)
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(str(arrays["meta"]))
    layers = [LayerPlan(**layer) for layer in meta["layers"]]
    topk = []
    for i, layer in enumerate(layers):
        state = StreamingTopK(len(layer.neurons), meta["k"][i])
        state.values, state.keys, state.nan_counts = arrays[f"values_{i}"], arrays[f"keys_{i}"], arrays[f"nan_{i}"]
        topk.append(state)
    return Step1Result(
        layers=layers,
        topk=topk,
        probe={int(key): ProbeImage(**image) for key, image in meta["probe"]},
        crops={int(key): CropInfo(**crop) for key, crop in meta["crops"]},
        crop_activations={tuple(k): [(int(c), float(a)) for c, a in v] for k, v in meta["crop_activations"]},
        counts=meta["counts"],
        skipped=meta["skipped"],
        timings=meta["timings"],
    )


