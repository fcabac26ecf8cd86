"""Record the outputs of named layers in ONE forward pass, and turn them into neuron maps.

Conv outputs (N,C,H,W) give C neurons with HxW maps; transformer token outputs (N,T,D) give D
neurons whose map is the patch-token grid (class/register tokens dropped); linear outputs (N,D)
give D neurons without maps.
"""

from __future__ import annotations

import math
from typing import Any

from dnd.errors import ConfigError


def resolve_layers(module: Any, layers: list[str]) -> dict[str, Any]:
    """Submodules for ``layers``; an unknown name lists the valid ones."""
    found = {}
    for name in layers:
        try:
            found[name] = module.get_submodule(name)
        except AttributeError:
            valid = [n for n, _ in module.named_modules() if n]
            shown = ", ".join(valid[:60]) + (f", ... ({len(valid)} in all; `dnd layers` lists them)" if len(valid) > 60 else "")
            raise ConfigError(f"unknown layer {name!r}; the model's layers are: {shown}") from None
    return found


def first_tensor(output: Any):
    import torch

    if isinstance(output, torch.Tensor):
        return output
    for attr in ("last_hidden_state", "logits"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output:
        return first_tensor(output[0])
    if isinstance(output, dict) and output:
        return first_tensor(next(iter(output.values())))
    return None


class LayerRecorder:
    """Forward hooks on named layers; hooks live only for one call and are removed in ``finally``."""

    def __init__(self, target: Any, layers: list[str]):
        self.target = target
        self.layers = list(layers)
        self.submodules = resolve_layers(target.module, self.layers)

    def __call__(self, batch: Any) -> dict[str, Any]:
        import torch

        captured: dict[str, Any] = {}
        handles = []

        def hook_for(name: str):
            def hook(_module, _inputs, output):
                tensor = first_tensor(output)
                if tensor is None:
                    raise ConfigError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
                captured[name] = tensor.detach()

            return hook

        try:
            for name, sub in self.submodules.items():
                handles.append(sub.register_forward_hook(hook_for(name)))
            with torch.inference_mode():
                self.target.forward(batch)
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.layers if name not in captured]
        if missing:
            raise ConfigError(f"layers {missing} were not used in the model's forward pass, so they have no activations")
        return captured


def token_grid(tokens: int) -> tuple[int, int]:
    """(extra leading tokens, side) for a token count: T = side², or 1 CLS (+ registers) + side²."""
    for extra in range(0, 9):
        side = math.isqrt(tokens - extra) if tokens > extra else 0
        if side > 0 and side * side == tokens - extra:
            return extra, side
    raise ValueError(f"{tokens} tokens do not form a square patch grid")


def neuron_maps(output: Any, layer: str):
    """(N, C, H, W) maps, or (N, D) for layers without spatial extent."""
    if output.dim() == 4:
        return output
    if output.dim() == 3:
        try:
            extra, side = token_grid(output.shape[1])
        except ValueError:
            raise ConfigError(
                f"layer {layer!r} outputs {tuple(output.shape)}; as (batch, tokens, dim) its tokens must form a "
                f"square patch grid (with up to 8 leading class/register tokens)"
            ) from None
        grid = output[:, extra:, :]
        return grid.transpose(1, 2).reshape(output.shape[0], output.shape[2], side, side)
    if output.dim() == 2:
        return output
    raise ConfigError(
        f"layer {layer!r} outputs a tensor of shape {tuple(output.shape)}; expected (N,C,H,W), (N,T,D) or (N,D)"
    )


def summarize(maps: Any, summary: str):
    """Scalar per neuron: the spatial mean (the paper's g) or max of each map."""
    if maps.dim() == 2:
        return maps
    flat = maps.flatten(2)
    if summary == "max":
        return flat.amax(dim=2)
    return flat.mean(dim=2)


def layer_sizes(target: Any, layers: list[str] | None = None) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Neuron count and output shape of each layer (all leaf-ish layers when ``layers`` is None),
    from one forward pass of a blank image."""
    import torch
    from PIL import Image

    from dnd.models.preprocess import Preprocessor

    module = target.module
    names = layers if layers is not None else [n for n, _ in module.named_modules() if n]
    pre = Preprocessor(target)
    pixels = pre.tensor(pre.view(Image.new("RGB", (pre.input_size, pre.input_size), (128, 128, 128)))[0]).unsqueeze(0)
    captured: dict[str, Any] = {}
    handles = []
    try:
        for name in names:
            sub = module.get_submodule(name)

            def hook(_m, _i, output, name=name):
                tensor = first_tensor(output)
                if tensor is not None:
                    captured.setdefault(name, tensor.detach())

            handles.append(sub.register_forward_hook(hook))
        with torch.inference_mode():
            target.forward(pixels)
    finally:
        for handle in handles:
            handle.remove()
    sizes = {}
    for name in names:
        tensor = captured.get(name)
        if tensor is None or tensor.dim() not in (2, 3, 4):
            continue
        if tensor.dim() == 3:
            try:
                token_grid(tensor.shape[1])
            except ValueError:
                continue
            sizes[name] = (int(tensor.shape[2]), tuple(tensor.shape[1:]))
        else:
            sizes[name] = (int(tensor.shape[1]), tuple(tensor.shape[1:]))
    return sizes
