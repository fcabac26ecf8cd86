"""A labelled image folder (one subfolder per class, the ImageFolder layout) run through a run's network.

The analyses of section 5 and A.6 need the dissected network itself: its layer activations on
labelled images (out-of-distribution detection) and its predictions with some neurons zeroed
(pruning). The network is rebuilt from the run's resolved config, so it is the one dissected.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

from dnd.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class LabelledFolder:
    root: str
    classes: list[str]  # subfolder names, sorted
    files: list[str]
    labels: list[int]  # index into ``classes`` per file

    def __len__(self) -> int:
        return len(self.files)


def read_labelled_folder(root: str) -> LabelledFolder:
    """Image files under ``root/<class>/`` (searched recursively inside each class folder)."""
    from dnd.store.fs import url_to_fs

    fs, base = url_to_fs(root)
    if not fs.isdir(base):
        raise ConfigError(f"labelled image folder {root!r} is not a directory; expected one subfolder of images per class")
    classes = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False) if fs.isdir(p))
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(f for f in fs.find(f"{base.rstrip('/')}/{name}") if f.lower().endswith(IMAGE_EXTENSIONS))
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        # Local paths stay plain; remote ones keep their scheme so open_uri can reach them.
        files += found if "file" in protocols else [fs.unstrip_protocol(f) for f in found]
        labels += [index] * len(found)
    if not files:
        raise ConfigError(f"labelled image folder {root!r} has no images in class subfolders; expected {root}/<class>/<image>")
    return LabelledFolder(root, classes, files, labels)


def run_target(config: dict) -> Any:
    """The run's network, built from its resolved config (``_SUCCESS``)."""
    from dnd.models.target import build_target

    target = config.get("target") or {}
    if not target.get("model"):
        raise ConfigError("the run's _SUCCESS has no target model in its config; expected a finished dnd run")
    return build_target(target["model"], target.get("weights"), target.get("checkpoint"), target.get("options") or {})


def _batches(folder: LabelledFolder, target: Any, batch_size: int) -> Iterator[Any]:
    import torch
    from PIL import Image

    from dnd.models.preprocess import Preprocessor
    from dnd.store.fs import open_uri

    prep = Preprocessor(target)
    for start in range(0, len(folder), batch_size):
        tensors = []
        for path in folder.files[start : start + batch_size]:
            try:
                with open_uri(path, "rb") as handle:
                    image = Image.open(handle)
                    image.load()
            except Exception as exc:
                raise ConfigError(f"cannot read image {path!r}: {exc}") from None
            view, _region = prep.view(image.convert("RGB"))
            tensors.append(prep.tensor(view))
        yield torch.stack(tensors)


@contextlib.contextmanager
def zeroed(target: Any, layer: str, neurons: list[int]) -> Iterator[None]:
    """While active, the listed neurons of ``layer`` output zero (channel dim for conv maps and
    linear outputs, the last dim for transformer tokens)."""
    from dnd.models.recorder import resolve_layers

    module = resolve_layers(target.module, [layer])[layer]
    index = list(neurons)

    def hook(_module, _inputs, output):
        if not index:
            return output
        out = output.clone()
        if out.dim() == 3:
            out[..., index] = 0
        else:
            out[:, index] = 0
        return out

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def logits(target: Any, folder: LabelledFolder, batch_size: int = 64) -> Any:
    """(images, outputs) numpy array of the network's outputs on every image of the folder."""
    import numpy as np
    import torch

    from dnd.models.recorder import first_tensor

    parts = []
    with torch.inference_mode():
        for batch in _batches(folder, target, batch_size):
            parts.append(first_tensor(target.forward(batch)).float().cpu().numpy())
    return np.concatenate(parts)


def layer_activations(target: Any, folder: LabelledFolder, layer: str, summary: str = "mean", batch_size: int = 64) -> Any:
    """(images, neurons) numpy array: each neuron's summarised activation (the paper's g) per image."""
    import numpy as np

    from dnd.models.recorder import LayerRecorder, neuron_maps, summarize

    recorder = LayerRecorder(target, [layer])
    parts = []
    for batch in _batches(folder, target, batch_size):
        output = recorder(batch)[layer]
        parts.append(summarize(neuron_maps(output, layer), summary).float().cpu().numpy())
    return np.concatenate(parts)
