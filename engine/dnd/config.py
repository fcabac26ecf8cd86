"""The run configuration: pydantic models, YAML loading and ``--set key=value`` overrides.

Defaults are the paper's (K=10 top images, 4 crops per image, N=5 candidate concepts, Q=10 images
per concept, beta=5, t=10, spatial-mean summary, top-k squared x image products scoring). Every
field carries a one-line description, which ``dnd config-reference`` and the README print.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dnd.errors import ConfigError


class _Section(BaseModel):
    # Unknown keys are almost always typos ("top_K", "crop_iuo"); refuse them instead of ignoring.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ActorPool(_Section):
    """How one model family runs as a Ray actor pool."""

    batch_size: int = Field(32, ge=1, description="Images (or prompts) per model call.")
    pool_size: int = Field(1, ge=1, description="Number of actors, each holding one copy of the model.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractions share a GPU between actors.")
    num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per actor (fractional so small machines don't stall).")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per actor, e.g. {gpu_node: 0.01}: the pool runs only on "
        "nodes that have them (ray start --resources)."
    )
    device: str = Field("auto", description="torch device: auto (cuda when num_gpus > 0 and available), cpu, cuda, cuda:1 ...")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads per actor; null = the node's CPUs divided by pool_size (Ray would give 1)."
    )


    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, amount in resources.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"resources names {name!r}, which num_cpus / num_gpus set; list only custom resources")
            if amount <= 0:
                raise ValueError(f"resource {name!r} needs an amount above 0, got {amount}")
        return resources


class TargetConfig(ActorPool):
    """The network being dissected."""

    model: str = Field(
        ...,
        description=(
            "Model spec: torchvision:NAME, timm:NAME, hf:ID_OR_PATH, or python:module:callable returning "
            "(model, preprocess)."
        ),
    )
    weights: str | None = Field(
        "DEFAULT",
        description=(
            "Weights: a torchvision weights enum name (DEFAULT, IMAGENET1K_V2 ...), 'none' for random "
            "initialisation of the full-size model, or 'random-tiny' for the same class at toy size."
        ),
    )
    checkpoint: str | None = Field(
        None, description="Local path or URI of a state_dict loaded with torch.load(weights_only=True) after building."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the model builder.")
    batch_size: int = Field(64, ge=1, description="Images per forward pass of the target model.")

    @field_validator("weights", mode="before")
    @classmethod
    def _none_string(cls, value: Any) -> Any:
        return "none" if value is None else value


class ProbeSource(_Section):
    """One source of probing images; a probing set is the union of its sources."""

    uri: str = Field(
        ...,
        description=(
            "Local folder, ImageFolder tree, fsspec URI (s3://, gs://, file://), Parquet file/folder, or "
            "gen://NAME?n=N&seed=S&size=PX for images rendered on the fly."
        ),
    )
    kind: Literal["auto", "folder", "parquet"] = Field(
        "auto", description="folder: image files found recursively (ImageFolder trees included); parquet: a bytes column."
    )
    image_column: str = Field("image", description="Parquet column holding encoded image bytes (or a struct with 'bytes').")
    limit: int | None = Field(None, ge=1, description="Use only the first N images of this source (in sorted order).")
    name: str | None = Field(None, description="Short name recorded with each image; defaults to the URI's last part.")


class ProbeConfig(_Section):
    """The probing set D_probe."""

    sources: list[ProbeSource] = Field(..., min_length=1, description="Sources whose union is the probing set.")
    extensions: list[str] = Field(
        [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"],
        description="File extensions read from folder sources (case-insensitive).",
    )
    files_per_read_task: int = Field(64, ge=1, description="Files read by one Ray Data task.")
    read_concurrency: int | None = Field(
        None, ge=1,
        description=(
            "Read-and-decode tasks running at once. null = automatic: unbounded when the target model runs on "
            "GPUs; on CPUs a quarter of the cluster's CPUs (at least 1), since decoding takes CPU time from the "
            "forward pass and a flood of readers starves the model actors while they start."
        ),
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for remote sources (endpoint_url, key, secret, anon ...)."
    )


class Step1Config(_Section):
    """Step 1: top-K activating images and attention crops (paper 3.1, A.1.1)."""

    summary: Literal["mean", "max"] = Field("mean", description="Summary function g over a neuron's spatial map.")
    top_k: int = Field(10, ge=1, description="K: top activating images kept per neuron.")
    crops: bool = Field(True, description="Add attention crops D_cropped to the probing set (ablation: false).")
    crops_per_image: int = Field(4, ge=0, description="alpha: largest salient regions cropped per top image.")
    crop_iou: float = Field(0.5, ge=0, le=1, description="eta: a crop's IoU with every crop already kept must be below this.")
    whole_image_iou_cap: float = Field(0.8, ge=0, le=1, description="A crop's IoU with the whole map (the part of the image the network saw) must be below this.")
    min_crop_pixels: int = Field(
        1, ge=1, description="Boxes narrower or shorter than this (original pixels) are not cropped (method dnd: 8)."
    )
    crop_scope: Literal["layer", "neuron"] = Field(
        "neuron", description="Whose crops enter a neuron's top-K: neuron (only crops cut from the neuron's own maps, as the "
        "authors' code does; both methods) or layer (every crop cut from the layer's maps competes for all its neurons)."
    )
    linear_crops: Literal["none", "gradcam"] = Field(
        "none", description="Crops for neurons without maps (fc): none as in the paper, or gradcam to crop their Grad-CAM maps (method dnd)."
    )
    gradcam_layer: str | None = Field(
        None, description="Spatial layer the Grad-CAM maps of linear neurons are taken on (null: the last one before the layer)."
    )
    keep_activations: bool | None = Field(
        None, description="Keep every neuron's summary activation on every probe image in activations/ (for dnd score); "
        "null: on when the run has a faithfulness section."
    )
    activations_dtype: Literal["float16", "float32"] = Field(
        "float16", description="Precision of kept activations: float16 halves their size (about 3 significant digits; activations "
        "it rounds together tie, and ties count together in AUPRC)."
    )


class BackendStage(ActorPool):
    """A backend chosen by name from its registry, with keyword options for its constructor."""

    backend: str = Field(..., description="Registered backend name (for example hf, openai, extractive, diffusers, clip, synthetic).")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options passed to the backend (model, device ...).")


class CaptionerConfig(BackendStage):
    backend: str = Field("hf", description="Captioner backend: hf (any image-to-text model), openai-vision, synthetic, serve.")
    batch_size: int = Field(16, ge=1, description="Images per captioning call.")
    cleanup: bool = Field(
        False, description="Remove captioning artefacts (BLIP's 'arafed', 'there is a picture of', repeated phrases) before "
        "Step 2B (method dnd); false passes captions on as the model wrote them, as the paper does."
    )


class SummarizerConfig(_Section):
    backend: str = Field("openai", description="Summarizer backend: openai (any OpenAI-compatible endpoint) or extractive.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options (model, base_url, api_key_env, temperature ...).")
    candidates: int = Field(5, ge=1, description="N: candidate concepts per neuron, one summary per shuffled caption order.")
    simplify: bool = Field(True, description="Simplify each caption first (prompt 1 of A.1.3).")


class GeneratorConfig(BackendStage):
    backend: str = Field("diffusers", description="Generator backend: diffusers (any text-to-image pipeline), synthetic, serve.")
    batch_size: int = Field(4, ge=1, description="Prompts per generation call.")
    images_per_concept: int = Field(10, ge=1, description="Q: images generated per candidate concept.")
    prompt_template: str = Field("One realistic image of {}", description="Prompt for a concept; {} is replaced by it.")


class EmbedderConfig(BackendStage):
    backend: str = Field("clip", description="Image/text embedder for image products and multiple labels (CLIP).")
    batch_size: int = Field(32, ge=1, description="Images or texts per embedding call.")


class SelectionConfig(_Section):
    """Step 3: best concept selection (paper 3.3, 3.4, A.1.4, A.7)."""

    enabled: bool = Field(True, description="Run Step 3; when false the first summary's candidate is the label.")
    scoring: Literal["mean", "topk_squared", "image_products", "topk_squared_image_products"] = Field(
        "topk_squared_image_products", description="Scoring function choosing the label among the candidates."
    )
    beta: int = Field(5, ge=1, description="beta: lowest ranks used by top-k squared.")
    top_t: int = Field(10, ge=1, description="t: highest-activating generated images per concept used by image products.")
    multilabel_similarity: float = Field(
        0.81, ge=0, le=1, description="A.7: a lower-scored candidate whose CLIP text similarity to a kept label exceeds this is dropped."
    )
    parsimony_share: float | None = Field(
        None, gt=0, le=1,
        description="The label gives way to a shorter phrase inside it (red circle -> red; the label's sub-phrases are generated too) "
        "when that phrase's images keep at least this share of the label's peak activation above the neuron's floor on three same-seed "
        "image pairs in four; "
        "null keeps the scoring function's choice as the paper does (method dnd: 0.5).",
    )
    multilabel_share: float | None = Field(
        None, gt=0, le=1,
        description="A.7 labels after the first need at least this share of the label's mean peak activation above the neuron's floor, "
        "and must not restate a kept label with words added or removed; null keeps every dissimilar candidate as the paper does "
        "(method dnd: 0.5).",
    )
    embedder: EmbedderConfig | None = Field(
        default_factory=EmbedderConfig, description="CLIP embedder; null disables image products and multi-label de-duplication."
    )


class OutputConfig(_Section):
    uri: str = Field("dnd-results", description="Where results go: a local path or an fsspec URI (s3://bucket/prefix).")
    cache_uri: str | None = Field(None, description="Shared cache location; defaults to <uri>/cache.")
    step1_uri: str | None = Field(
        None, description="Where Step 1's checkpoint, top images and kept activations go; runs that name the same "
        "one with the same Step 1 share it (dnd compare does); defaults to <uri>."
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the output location.")
    checkpoint_images: int = Field(
        5000, ge=1, description="Step 1 pass A saves its progress (top-K so far, images taken) every this many probe "
        "images, so a run killed inside Step 1 resumes from the last save."
    )
    checkpoint_seconds: float = Field(300.0, gt=0, description="... or every this many seconds, whichever comes first.")
    image_format: Literal["png", "jpeg"] = Field("png", description="Encoding of crops and generated images in images/.")


class FaithfulnessConfig(_Section):
    """Faithfulness of every label and candidate over the whole probing set (NeuronEval, arXiv 2506.05774)."""

    concepts: str = Field(
        ..., description="Concept vectors: clip (the run's embedder on every probe image), labels:PATH (a CSV of "
        "image,label[,label...] or an ImageFolder root), planted (the demo world's truth) or another registered source."
    )
    metrics: list[Literal["correlation", "cosine", "auprc", "f1", "iou"]] = Field(
        ["correlation", "cosine", "auprc", "f1", "iou"], min_length=1,
        description="Metrics to compute: the five that pass NeuronEval's missing- and extra-label checks.",
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="F1 and IoU binarise each neuron's activations at its top-alpha quantile "
        "(NeuronEval tunes alpha per setting; set it near how often the concepts occur in the probe; 0.05 is ours)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the concept source (labels: similarity; clip: binarise)."
    )


class ClipDissectConfig(_Section):
    """method clip-dissect: each neuron's label is the concept of a fixed set with the highest soft-WPMI
    between its top probe images and the concept's text (CLIP-Dissect, ICLR 2023; its defaults)."""

    concept_set: str = Field(
        "english:20000", description="Concept set S: english:N (the N most frequent English words; needs wordfreq), "
        "file:PATH (one concept a line) or planted[:N distractors] (the demo world's vocabulary)."
    )
    top_k: int = Field(100, ge=1, description="Most activating probe images forming each neuron's soft example set.")
    a: float = Field(10.0, gt=0, description="Scale of image-concept similarities in the softmax over concepts.")
    lam: float = Field(1.0, ge=0, description="Weight of the concept's prior, log p(t), subtracted from log p(t | examples).")
    p_start: float = Field(0.998, gt=0, le=1, description="Membership probability of a neuron's most activating image.")
    p_end: float = Field(0.97, gt=0, le=1, description="Membership falls linearly from p_start towards this over the top_k images.")
    candidates: int = Field(5, ge=1, description="Concepts reported per neuron, best soft-WPMI first; the first is the label.")


class CandidatesConfig(_Section):
    """Where Step 3's candidate concepts come from, beside Step 2's summaries."""

    clip_dissect_top: int = Field(
        0, ge=0, description="Also give each neuron CLIP-Dissect's best N concepts of clip_dissect.concept_set as "
        "candidates, for Step 3's generated images to weigh against the summaries' (0: none)."
    )


class RayConfig(_Section):
    address: str | None = Field(None, description="Ray address; null joins a running cluster or starts a local one.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray started by dnd (null = all).")
    object_store_memory: int | None = Field(None, ge=78643200, description="Object store bytes of a local Ray started by dnd.")
    stall_timeout_s: float | None = Field(
        600.0, gt=0, description="A stage that delivers no batch for this long fails, naming what it asks for and what "
        "the cluster has (a pool that no live node can hold waits forever otherwise); null: no limit."
    )


NeuronSpec = Union[Literal["all"], int, str, list[Union[int, str]]]


Method = Literal["paper", "dnd", "clip-dissect"]

#: What a method sets where the config does not. The fields' own defaults are the paper's (section 3
#: and A.1 as written; where the paper is silent, the authors' published procedure: crops per neuron,
#: no minimum crop size). ``dnd`` is the paper plus dnd's measured additions, each still switchable.
METHOD_DEFAULTS: dict[str, dict[tuple[str, str], Any]] = {
    "paper": {
        ("step1", "linear_crops"): "none",
        ("step1", "min_crop_pixels"): 1,
        ("captioner", "cleanup"): False,
        ("selection", "parsimony_share"): None,
        ("selection", "multilabel_share"): None,
    },
    # CLIP-Dissect reads the probing set only: no attention crops, nothing of Steps 2-3.
    "clip-dissect": {
        ("step1", "crops"): False,
        ("step1", "linear_crops"): "none",
        ("step1", "min_crop_pixels"): 1,
        ("captioner", "cleanup"): False,
        ("selection", "parsimony_share"): None,
        ("selection", "multilabel_share"): None,
    },
    "dnd": {
        ("step1", "linear_crops"): "gradcam",
        ("step1", "min_crop_pixels"): 8,
        ("captioner", "cleanup"): True,
        ("selection", "parsimony_share"): 0.5,
        ("selection", "multilabel_share"): 0.5,
    },
}

#: Sections that say what is dissected, where results go and how they are judged, not how they are
#: made: never "options that differ".
_NOT_OPTIONS = ("method", "target", "layers", "neurons", "probe", "output", "ray", "faithfulness")


class RunConfig(_Section):
    """One Describe-and-Dissect run."""

    method: Method = Field(
        "paper", description="paper: the paper exactly (section 3, A.1); dnd: the paper plus dnd's additions (Grad-CAM crops "
        "for linear neurons, an 8-pixel minimum crop side, caption clean-up, parsimony, activation "
        "evidence for multiple labels), each still switchable on its own; clip-dissect: CLIP-Dissect on the same Step 1 "
        "(soft-WPMI over a fixed concept set, see clip_dissect)."
    )
    target: TargetConfig = Field(..., description="The network to dissect.")
    layers: list[str] = Field(..., min_length=1, description="Module names whose neurons are described (layer4, fc ...).")
    neurons: Union[NeuronSpec, dict[str, NeuronSpec]] = Field(
        "all", description="Neurons: all, a list, ranges like '0:64' or '0:8,12', or a mapping layer -> such a spec."
    )
    probe: ProbeConfig = Field(..., description="The probing set.")
    step1: Step1Config = Field(default_factory=Step1Config, description="Top-K images and attention crops.")
    captioner: CaptionerConfig | None = Field(
        default_factory=CaptionerConfig, description="Step 2A; null stops after Step 1."
    )
    summarizer: SummarizerConfig = Field(default_factory=SummarizerConfig, description="Step 2B.")
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig, description="Step 3 image generation.")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="Step 3 scoring.")
    seed: int = Field(0, description="Seed for summary shuffles and image generation.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Results location.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster connection.")
    faithfulness: FaithfulnessConfig | None = Field(
        None, description="Score every label and candidate at the end of the run, as dnd score does (null: not scored)."
    )
    clip_dissect: ClipDissectConfig = Field(
        default_factory=ClipDissectConfig, description="method clip-dissect, and candidates.clip_dissect_top."
    )
    candidates: CandidatesConfig = Field(default_factory=CandidatesConfig, description="Extra candidate concepts.")

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """Fill each option the config leaves unset with its method's value (METHOD_DEFAULTS)."""
        if not isinstance(data, dict) or data.get("method", "paper") not in METHOD_DEFAULTS:
            return data  # not a mapping, or an unknown method: the field validation names the problem
        data = dict(data)
        for (section, key), value in METHOD_DEFAULTS[data.get("method", "paper")].items():
            given = data.get(section, {})
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            if isinstance(given, dict) and key not in given:
                data[section] = {**given, key: value}
        return data

    def differs_from_method(self) -> dict[str, Any]:
        """Every option (dotted name -> value) that differs from what this config's method sets by
        default, so a reader of a run can tell a paper run from a tuned one. What is dissected and
        where results go (target, layers, neurons, probe, output, ray) are not options."""
        baseline = RunConfig.model_validate({
            "method": self.method, "target": self.target.model_dump(), "layers": self.layers,
            "probe": self.probe.model_dump(),
        }).model_dump(mode="json", exclude=set(_NOT_OPTIONS))
        return _flat_differences(self.model_dump(mode="json", exclude=set(_NOT_OPTIONS)), baseline)

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, layers: list[str]) -> list[str]:
        seen = set()
        for name in layers:
            if name in seen:
                raise ValueError(f"layer {name!r} is listed twice")
            seen.add(name)
        return layers

    @model_validator(mode="after")
    def _keep_activations_for_faithfulness(self) -> "RunConfig":
        needed = [what for what, wanted in (("faithfulness", self.faithfulness is not None),
                                            ("method clip-dissect", self.method == "clip-dissect"),
                                            ("candidates.clip_dissect_top", self.candidates.clip_dissect_top > 0))
                  if wanted]
        if self.step1.keep_activations is None:
            self.step1.keep_activations = bool(needed)
        elif needed and not self.step1.keep_activations:
            raise ValueError(f"{' and '.join(needed)} need every probe image's activations: "
                             "step1.keep_activations cannot be false")
        return self

    @model_validator(mode="after")
    def _neuron_keys_are_layers(self) -> "RunConfig":
        if isinstance(self.neurons, dict):
            unknown = sorted(set(self.neurons) - set(self.layers))
            if unknown:
                raise ValueError(f"neurons names layers {unknown} that are not in layers {self.layers}")
        return self

    def neuron_spec(self, layer: str) -> NeuronSpec:
        if isinstance(self.neurons, dict):
            return self.neurons.get(layer, "all")
        return self.neurons


def _flat_differences(mine: Any, base: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted names whose values differ between two dumped configs (a section only on one side is one entry)."""
    if isinstance(mine, dict) and isinstance(base, dict):
        out: dict[str, Any] = {}
        for key in sorted(mine.keys() | base.keys()):
            out.update(_flat_differences(mine.get(key), base.get(key), f"{prefix}{key}."))
        return out
    return {} if mine == base else {prefix[:-1]: mine}


_RANGE = re.compile(r"^\s*(\d*)\s*:\s*(\d*)\s*$")


def resolve_neurons(spec: NeuronSpec, size: int, layer: str) -> list[int]:
    """Turn a neuron spec into sorted unique neuron indices of a layer with ``size`` neurons."""

    def bad(value: Any) -> ConfigError:
        return ConfigError(
            f"neurons {value!r} for layer {layer!r} are out of range: the layer has {size} neurons (0..{size - 1})"
        )

    if spec == "all":
        return list(range(size))
    items: list[Any]
    if isinstance(spec, (int, str)):
        items = [spec]
    else:
        items = list(spec)
    chosen: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ConfigError(f"neurons entry {item!r} for layer {layer!r} is not a neuron index or range")
        if isinstance(item, int):
            if not 0 <= item < size:
                raise bad(item)
            chosen.add(item)
            continue
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if part == "all":
                chosen.update(range(size))
                continue
            match = _RANGE.match(part)
            if match:
                start = int(match.group(1)) if match.group(1) else 0
                stop = int(match.group(2)) if match.group(2) else size
                if start >= stop or stop > size:
                    raise bad(part)
                chosen.update(range(start, stop))
            elif part.isdigit():
                if int(part) >= size:
                    raise bad(part)
                chosen.add(int(part))
            else:
                raise ConfigError(
                    f"neurons entry {part!r} for layer {layer!r} is not understood; expected 'all', an index, "
                    f"or a range like '0:64'"
                )
    if not chosen:
        raise ConfigError(f"neurons {spec!r} select no neuron of layer {layer!r}")
    return sorted(chosen)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not of the form key=value (for example step1.top_k=5)")
    key, raw = item.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"--set {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted ``key=value`` overrides; values are parsed as YAML (numbers, lists, null)."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section (it is {child!r})")
            node = child
        node[path[-1]] = value
    return data


def _format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"invalid run configuration ({origin}):"]
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key (check its spelling; `dnd config-reference` lists every key)")
        elif problem["type"] == "missing":
            lines.append(f"  {where}: required but missing")
        else:
            lines.append(f"  {where}: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong and where (its own text spans several lines)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def load_config(source: Any, overrides: list[str] | None = None) -> RunConfig:
    """Build a RunConfig from a YAML path, a YAML string, a dict or a RunConfig, then apply overrides."""
    overrides = overrides or []
    origin = "dict"
    if isinstance(source, RunConfig):
        if not overrides:
            return source
        data = source.model_dump(mode="json")
    elif isinstance(source, dict):
        data = dict(source)
    elif isinstance(source, (str, Path)):
        text = str(source)
        path = Path(text)
        if "\n" not in text and (path.suffix in {".yaml", ".yml"} or path.exists()):
            if not path.exists():
                raise ConfigError(f"config file {text!r} does not exist")
            origin = text
            text = path.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {origin} is not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {origin} must be a YAML mapping of sections, got {type(data).__name__}")
    else:
        raise ConfigError(f"cannot read a run configuration from {type(source).__name__}")
    data = apply_overrides(data, overrides)
    if isinstance(source, RunConfig) and isinstance(data, dict) and data.get("method", "paper") != source.method:
        # A built config spells out what its method filled in; those values follow a method override.
        for (section, key), value in METHOD_DEFAULTS[source.method].items():
            if isinstance(data.get(section), dict) and data[section].get(key, object()) == value:
                data[section] = {k: v for k, v in data[section].items() if k != key}
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None


def config_reference() -> str:
    """Every config key with its default and description, as Markdown."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            annotation = field.annotation
            nested = _section_type(annotation)
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=False)) if field.default_factory is None else "(section)"
            lines.append(f"| `{key}` | {default} | {field.description or ''} |")
            if nested is not None:
                is_list = getattr(annotation, "__origin__", None) is list
                walk(nested, key + ("[]." if is_list else "."))

    lines.append("| key | default | meaning |")
    lines.append("| --- | --- | --- |")
    walk(RunConfig, "")
    return "\n".join(lines)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
