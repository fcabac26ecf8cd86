"""Spatial maps for neurons that have none (linear layers such as ``fc``), so they get attention crops too.

The paper crops only neurons with activation maps; a class logit has no map, so its top images are
captioned whole, and a concept that is small in them (a small object beside two large ones) never
reaches a caption. Grad-CAM (Selvaraju et al., 2017) gives such a neuron a map on the last spatial
layer S before it: map = ReLU(Σ_c α_c · A_c), with α_c the spatial mean of ∂y/∂A_c. The map then
goes through the same Otsu cropping as any activation map (``attention.attention_boxes``).
This is an extension beyond the paper, switched on by ``step1.linear_crops: gradcam``.
"""

from __future__ import annotations

from typing import Any, Callable

from dnd.errors import ConfigError


def find_map_layer(module: Any, layer: str, run: Callable[[], Any]) -> str:
    """The last named submodule whose output has a spatial grid (N, C, H, W with H·W > 1) and that
    finishes before ``layer`` does in one forward pass (``run``). Containers count: for a ResNet the
    answer is ``layer4`` (``avgpool`` is 1×1)."""
    import torch

    order: list[tuple[str, bool]] = []
    handles = []

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            spatial = isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1
            order.append((name, spatial))

        return hook

    try:
        for name, sub in module.named_modules():
            if name:
                handles.append(sub.register_forward_hook(hook_for(name)))
        with torch.inference_mode():
            run()
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name, _ in order]
    if layer not in names:
        raise ConfigError(f"layer {layer!r} was not used in the model's forward pass, so it has no Grad-CAM map")
    before = order[: names.index(layer)]
    spatial = [name for name, is_spatial in before if is_spatial and not layer.startswith(name + ".")]
    if not spatial:
        raise ConfigError(
            f"layer {layer!r} has no spatial layer before it to take a Grad-CAM map from; "
            "set step1.gradcam_layer to a layer with (N, C, H, W) outputs, or step1.linear_crops: none"
        )
    return spatial[-1]


def gradcam_maps(module: Any, forward: Callable[[Any], Any], inputs: Any, map_layer: str, layer: str,
                 requests: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    """Grad-CAM maps ``{(image position, neuron): (H, W) float numpy}`` of ``layer``'s neurons on the
    ``map_layer`` grid, for the (position, neuron) pairs in ``requests``.

    Images in a batch do not interact in an eval-mode network, so one backward pass serves one
    neuron per image: requests are taken in rounds, each round summing one requested output per
    image and reading every image's gradient at once.
    """
    import torch

    source = module.get_submodule(map_layer)
    target = module.get_submodule(layer)
    captured: dict[str, Any] = {}

    def keep_source(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"Grad-CAM layer {map_layer!r} returned {type(output).__name__}, not a tensor")
        if not output.requires_grad:
            # With frozen weights nothing upstream needs a gradient; the map layer's output is the leaf.
            output = output.detach().requires_grad_(True)
        captured["A"] = output
        return output

    def keep_target(_module, _inputs, output):
        captured["y"] = output

    by_image: dict[int, list[tuple[int, int]]] = {}
    for position, neuron in requests:
        by_image.setdefault(position, []).append((position, neuron))
    handles = [source.register_forward_hook(keep_source), target.register_forward_hook(keep_target)]
    try:
        with torch.enable_grad():
            forward(inputs)
    finally:
        for handle in handles:
            handle.remove()
    activations, outputs = captured.get("A"), captured.get("y")
    if activations is None or outputs is None:
        raise ConfigError(f"Grad-CAM: layers {map_layer!r} and {layer!r} must both run in the forward pass")
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
        raise ConfigError(f"Grad-CAM needs a linear layer with (N, D) outputs; {layer!r} gave {getattr(outputs, 'shape', type(outputs))}")
    maps: dict[tuple[int, int], Any] = {}
    depth = max((len(v) for v in by_image.values()), default=0)
    for r in range(depth):
        chosen = [pairs[r] for pairs in by_image.values() if len(pairs) > r]
        positions = torch.as_tensor([p for p, _ in chosen], device=outputs.device)
        neurons = torch.as_tensor([n for _, n in chosen], device=outputs.device)
        total = outputs[positions, neurons].sum()
        (grad,) = torch.autograd.grad(total, activations, retain_graph=r + 1 < depth)
        weights = grad[positions].float().mean(dim=(2, 3), keepdim=True)
        cams = torch.relu((weights * activations[positions].detach().float()).sum(dim=1))
        for (position, neuron), cam in zip(chosen, cams):
            maps[(position, neuron)] = cam.cpu().numpy()
    return maps
