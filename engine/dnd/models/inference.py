"""Inference-only rewrites of a target model that change its speed, not its outputs.

The engine only ever runs target models in eval mode under ``torch.inference_mode``, so two standard
rewrites apply to convolutional networks (resnet18 on 2 CPUs, batch 100: 25.7 ms/image as loaded,
20.5 with channels-last weights, 17.2 with BatchNorm folded in as well):

* **BatchNorm folding**: an eval-mode BatchNorm2d that directly follows a Conv2d whose output feeds
  nothing else is an affine map per channel, so it is folded into the convolution's weights and bias
  and replaced by an identity.
* **channels-last layout** (NHWC), which oneDNN's CPU and cuDNN's tensor-core convolutions prefer.

Outputs agree with the unmodified model up to float rounding. A recorded layer's output must not
change meaning, so a pair is left alone when the convolution or the BatchNorm is itself a recorded
layer (containers around them, such as ``layer4``, are unaffected: their outputs are the same).
"""

from __future__ import annotations

from typing import Any


def conv_bn_pairs(module: Any) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm2d fed only by a Conv2d, found by tracing the module
    with torch.fx. A network that fx cannot trace yields no pairs (and runs as loaded)."""
    import torch

    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:
        return []
    modules = dict(module.named_modules())
    # A module called at two places in the graph (shared weights) cannot be rewritten for one of them.
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), torch.nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if (getattr(source, "op", None) == "call_module" and isinstance(modules.get(source.target), torch.nn.Conv2d)
                and len(source.users) == 1 and calls[str(source.target)] == 1 and calls[str(node.target)] == 1):
            pairs.append((str(source.target), str(node.target)))
    return pairs


def fold_batchnorms(module: Any, recorded: list[str]) -> int:
    """Fold eval-mode BatchNorms into the convolutions before them (see module doc); returns how many."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if module.training:
        return 0
    keep = set(recorded)
    folded = 0
    for conv_name, bn_name in conv_bn_pairs(module):
        if conv_name in keep or bn_name in keep:
            continue
        conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
        if bn.training or not bn.track_running_stats or bn.running_mean is None:
            continue
        _replace(module, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace(module, bn_name, torch.nn.Identity())
        folded += 1
    return folded


def prefer_channels_last(module: Any) -> bool:
    """Store a convolutional network's weights channels-last; networks without 2-D convolutions are
    left as they are (the layout only matters to convolutions)."""
    import torch

    if not any(isinstance(m, torch.nn.Conv2d) for m in module.modules()):
        return False
    module.to(memory_format=torch.channels_last)
    return True


def optimise_for_inference(module: Any, recorded: list[str]) -> dict[str, Any]:
    """Apply both rewrites in place; returns what was done (for logs and tests)."""
    folded = fold_batchnorms(module, recorded)
    return {"batchnorms_folded": folded, "channels_last": prefer_channels_last(module)}


def _replace(root: Any, name: str, new: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
