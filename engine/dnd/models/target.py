"""Target models: build a network and its preprocessing from a model spec.

A spec is ``family:name`` (``torchvision:resnet50``, ``timm:vit_base_patch16_224``,
``hf:google/vit-base-patch16-224``, ``python:my_pkg.models:build``); each family is a registered
builder. Weights are ``DEFAULT``/an enum name (torchvision), ``none`` (full size, random) or
``random-tiny`` (the same class at toy size with random weights, built in memory).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from dnd.errors import ConfigError
from dnd.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """The geometry and normalisation a network expects.

    Knowing the geometry (resize shorter side, then centre crop) lets attention crops be mapped from
    the activation map back onto the original image instead of onto a resized copy.
    """

    crop: int
    resize: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class TargetModel:
    """A built network with how to feed it.

    Exactly one of ``input_spec`` and ``preprocess`` is set: ``preprocess`` (a PIL → tensor callable
    from a ``python:`` builder) is used as given, and its activation maps are mapped onto the whole image.
    """

    module: Any
    input_spec: InputSpec | None = None
    preprocess: Callable[[Any], Any] | None = None
    class_names: list[str] | None = None
    description: str = ""
    #: How to run the module on a pixel batch when ``module(pixels)`` is not it (Hugging Face models).
    call: Callable[[Any, Any], Any] | None = None
    extra: dict = field(default_factory=dict)

    def forward(self, pixels: Any) -> Any:
        return self.call(self.module, pixels) if self.call is not None else self.module(pixels)


TARGET_FAMILIES: Registry[Callable[..., TargetModel]] = Registry("target model family")


def _split_spec(spec: str) -> tuple[str, str]:
    family, sep, name = spec.partition(":")
    if not sep or not name:
        raise ConfigError(
            f"target model {spec!r} is not of the form FAMILY:NAME; expected one of "
            f"{', '.join(f'{f}:...' for f in TARGET_FAMILIES.names())}"
        )
    return family, name


def build_target(spec: str, weights: str | None = "DEFAULT", checkpoint: str | None = None, options: dict | None = None) -> TargetModel:
    """Build the target network named by ``spec``; load ``checkpoint`` (a state_dict) if given."""
    from dnd.tiny import tiny_weights_seeded
    from dnd.workdir import ensure_working_directory

    ensure_working_directory()  # torchvision/timm/transformers resolve paths against it when loading
    family, name = _split_spec(spec)
    builder = TARGET_FAMILIES.get(family)
    # Random initialisation is seeded: every actor (and the driver) must build the same network,
    # or crops would be scored by different weights than the images they came from.
    with tiny_weights_seeded():
        target = builder(name, weights=(weights or "none"), **(options or {}))
    target.module.eval()
    if checkpoint:
        load_checkpoint(target.module, checkpoint)
    return target


def load_checkpoint(module: Any, uri: str) -> None:
    import torch

    from dnd.store.fs import open_uri

    try:
        with open_uri(uri, "rb") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {uri!r} does not exist") from None
    except Exception as exc:  # weights_only refuses pickled code: say so instead of a traceback
        raise ConfigError(f"checkpoint {uri!r} cannot be loaded as a state_dict with weights_only=True: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {uri!r} does not match the model: missing keys {list(missing)[:5]}, "
            f"unexpected keys {list(unexpected)[:5]}"
        )


# ---------------------------------------------------------------------------------------------
# torchvision


def _tiny_torchvision(name: str):
    from torchvision import models

    if name.startswith("resnet") or name.startswith("resnext") or name.startswith("wide_resnet"):
        from torchvision.models.resnet import BasicBlock, ResNet

        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), InputSpec(crop=32, resize=36)
    if name.startswith("vit_"):
        return (
            models.VisionTransformer(
                image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
            ),
            InputSpec(crop=32, resize=36),
        )
    if name.startswith("vgg"):
        from torchvision.models.vgg import VGG, make_layers

        return VGG(make_layers([8, "M", 16, "M"], batch_norm=False), num_classes=10), InputSpec(crop=32, resize=36)
    raise ConfigError(
        f"weights 'random-tiny' is available for torchvision resnet*, vit_* and vgg* models, not {name!r}; "
        f"use weights: none for a full-size random {name}"
    )


@TARGET_FAMILIES.register("torchvision")
def _torchvision(name: str, weights: str = "DEFAULT", **options: Any) -> TargetModel:
    from torchvision import models

    available = set(models.list_models(module=models))
    if name not in available:
        close = sorted(n for n in available if n.startswith(name[:3]))[:12]
        raise ConfigError(f"unknown torchvision model {name!r}; similar names: {', '.join(close) or 'none'}")
    if weights == "random-tiny":
        module, spec = _tiny_torchvision(name)
        return TargetModel(module=module, input_spec=spec, description=f"torchvision:{name} (random-tiny)")
    enum = None
    if weights.lower() != "none":
        try:
            weights_enum = models.get_model_weights(name)
            enum = weights_enum[weights] if weights != "DEFAULT" else weights_enum.DEFAULT
        except KeyError:
            valid = ["DEFAULT", "none", "random-tiny", *[w.name for w in models.get_model_weights(name)]]
            raise ConfigError(f"unknown weights {weights!r} for torchvision:{name}; expected one of {valid}") from None
    module = models.get_model(name, weights=enum, **options)
    spec = InputSpec(crop=224, resize=256)
    class_names = None
    if enum is not None:
        transform = enum.transforms()
        crop = getattr(transform, "crop_size", [224])
        resize = getattr(transform, "resize_size", [256])
        spec = InputSpec(
            crop=int(crop[0] if isinstance(crop, (list, tuple)) else crop),
            resize=int(resize[0] if isinstance(resize, (list, tuple)) else resize),
            mean=tuple(getattr(transform, "mean", IMAGENET_MEAN)),
            std=tuple(getattr(transform, "std", IMAGENET_STD)),
        )
        class_names = list(enum.meta.get("categories") or []) or None
    return TargetModel(module=module, input_spec=spec, class_names=class_names, description=f"torchvision:{name} ({weights})")


# ---------------------------------------------------------------------------------------------
# timm


@TARGET_FAMILIES.register("timm")
def _timm(name: str, weights: str = "DEFAULT", **options: Any) -> TargetModel:
    try:
        import timm
    except ImportError:
        raise ConfigError("target model family 'timm' needs the timm package: pip install 'dnd[timm]'") from None
    if not timm.list_models(name) and name not in timm.list_models(pretrained=True):
        raise ConfigError(f"unknown timm model {name!r}")
    kwargs = dict(options)
    if weights == "random-tiny":
        if "vit" in name or "deit" in name:
            kwargs.update(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
        else:
            kwargs.setdefault("num_classes", 10)
        module = timm.create_model(name, pretrained=False, **kwargs)
        spec = InputSpec(crop=32, resize=36)
    else:
        module = timm.create_model(name, pretrained=weights.lower() != "none", **kwargs)
        cfg = timm.data.resolve_data_config({}, model=module)
        size = int(cfg.get("input_size", (3, 224, 224))[-1])
        crop_pct = float(cfg.get("crop_pct", 0.875) or 1.0)
        spec = InputSpec(crop=size, resize=int(round(size / crop_pct)), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    return TargetModel(module=module, input_spec=spec, description=f"timm:{name} ({weights})")


# ---------------------------------------------------------------------------------------------
# Hugging Face image classifiers


def _hf_logits(model: Any, pixels: Any) -> Any:
    return model(pixel_values=pixels).logits


@TARGET_FAMILIES.register("hf")
def _hf(name: str, weights: str = "DEFAULT", **options: Any) -> TargetModel:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    if weights == "random-tiny":
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=10,
        )
        model = ViTForImageClassification(config)
        return TargetModel(
            module=model, call=_hf_logits, input_spec=InputSpec(crop=32, resize=36, mean=(0.5,) * 3, std=(0.5,) * 3),
            description=f"hf:{name} (random-tiny ViT)",
        )
    try:
        if weights.lower() == "none":
            from transformers import AutoConfig

            model = AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(name), **options)
        else:
            model = AutoModelForImageClassification.from_pretrained(name, **options)
        processor = AutoImageProcessor.from_pretrained(name)
    except OSError as exc:
        raise ConfigError(f"Hugging Face model {name!r} cannot be loaded (not cached offline, or not a path): {exc}") from None
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    crop = int(size.get("height") or size.get("shortest_edge") or 224) if isinstance(size, dict) else int(size)
    spec = InputSpec(
        crop=crop,
        resize=None,
        mean=tuple(getattr(processor, "image_mean", IMAGENET_MEAN)),
        std=tuple(getattr(processor, "image_std", IMAGENET_STD)),
    )
    labels = getattr(model.config, "id2label", None)
    class_names = [labels[i] for i in range(len(labels))] if labels else None
    return TargetModel(module=model, call=_hf_logits, input_spec=spec, class_names=class_names, description=f"hf:{name}")


# ---------------------------------------------------------------------------------------------
# python:module:callable


@TARGET_FAMILIES.register("python")
def _python(name: str, weights: str = "DEFAULT", **options: Any) -> TargetModel:
    module_name, sep, attr = name.rpartition(":")
    if not sep:
        raise ConfigError(f"python target {name!r} must be python:module.path:callable")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"python target {name!r} cannot be imported: {exc}") from None
    kwargs = dict(options)
    if weights not in ("DEFAULT", None):
        kwargs.setdefault("weights", None if weights == "none" else weights)
    result = factory(**kwargs)
    if not (isinstance(result, tuple) and len(result) == 2 and callable(result[1])):
        raise ConfigError(f"python target {name!r} must return (model, preprocess); got {type(result).__name__}")
    module, preprocess = result
    class_names = getattr(module, "class_names", None)
    return TargetModel(module=module, preprocess=preprocess, class_names=list(class_names) if class_names else None, description=f"python:{name}")
