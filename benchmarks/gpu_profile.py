"""GPU profile: seconds per neuron in each stage of a dissection with the paper's full-size models.

The models are the paper's, built from their configurations with random weights (nothing is
downloaded): ResNet-50 (`torchvision:resnet50`, `weights: none`), BLIP-base captioning (ViT-B/16 at
384 px, BERT-base text decoder), Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text encoder, PNDM
scheduler) and CLIP ViT-B/16. BLIP, Stable Diffusion and CLIP are saved with `save_pretrained` into a
folder and the run points the engine's own backends (`hf`, `diffusers`, `clip`) at it, so what is timed
is `dnd.pipeline.dissect` — Ray actor pools, caches and all — with examples/resnet50_imagenet.yaml's
settings (K=10 top images, 4 crops, N=5 candidates, Q=10 images per concept, 50 denoising steps) on
generated probe images (`gen://shapes`) and the loopback LLM stub (tests/support/llm_stub.py) as the
summarizer. Stage seconds come from `_SUCCESS`'s `timings_s`; Step 3's generation is timed by wrapping
the engine's `run_generation` (scoring is the rest of Step 3). Model load seconds are timed standalone
(each backend built once in this process before the run), as the JSON says.

On CUDA it runs at full size; elsewhere a reduced size (fewer probe images, neurons, images per concept
and steps, smaller generated images) that finishes in a few minutes on 2 CPUs, and says what it reduced.
`--full` forces full size. Prints one JSON line; logs go to stderr.

    RAY_AUTH_MODE=disabled python benchmarks/gpu_profile.py [--full] [--neurons N] [--images N] [--models DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # configs only: nothing may be fetched
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from tests.support.llm_stub import StubLLM  # noqa: E402

#: The paper's settings (section 4, examples/resnet50_imagenet.yaml).
PAPER = {"top_k": 10, "crops_per_image": 4, "candidates": 5, "images_per_concept": 10, "steps": 50,
         "image_size": 512, "caption_max_new_tokens": 30}
#: What a full run here uses where the paper's scale does not fit a profile (the paper probes
#: ImageNet val + Broden, ~113k images, and dissects all 4,840 neurons of layers 1-4 and fc).
FULL = {**PAPER, "probe_images": 2000, "neurons_per_layer": 2}
#: The CPU run: same models, less work, so that it finishes in minutes on 2 CPUs.
REDUCED = {**PAPER, "probe_images": 100, "neurons_per_layer": 1, "top_k": 5, "images_per_concept": 2, "steps": 2,
           "image_size": 128, "caption_max_new_tokens": 12}
LAYERS = ["layer4", "fc"]


def log(message: str) -> None:
    print(f"[gpu-profile] {message}", file=sys.stderr, flush=True)


def count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# full-size models with random weights, saved where the engine's backends load them from


def bert_vocab(size: int) -> list[str]:
    """A WordPiece vocabulary of BERT-base's size with BERT's special tokens at their ids (0, 100-103),
    so token ids line up with BLIP's config; the other entries are readable made-up words (the tiny
    tokenizer's words first), so that random captions decode to words the summarizer can count."""
    from itertools import product

    from dnd.tiny import TINY_WORDS

    special = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syllables = [c + v for c, v in product(consonants, vowels)]

    def words():
        yield from TINY_WORDS
        for n in (2, 3):
            for parts in product(syllables, repeat=n):
                yield "".join(parts)

    vocab, seen, made = [], set(special.values()), words()
    for index in range(size):
        if index in special:
            vocab.append(special[index])
            continue
        word = next(made)
        while word in seen:
            word = next(made)
        seen.add(word)
        vocab.append(word)
    return vocab


def save_blip(folder: str) -> int:
    """Salesforce/blip-image-captioning-base's sizes: ViT-B/16 at 384 px, BERT-base decoder, 30,524 tokens."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    words = bert_vocab(30522)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # id 30522, BLIP's decoder start
    config = BlipConfig(
        text_config=dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=768, intermediate_size=3072,
                         num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=102, sep_token_id=102, pad_token_id=0),
        # BLIP's default vision initializer_range (1e-10) would make every image look alike to the
        # decoder, and every neuron would get the same captions; 0.02 keeps them apart.
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=384, patch_size=16, layer_norm_eps=1e-5, initializer_range=0.02),
        projection_dim=512, image_text_hidden_size=256,
    )
    model = BlipForConditionalGeneration(config)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return count(model)


def save_stable_diffusion(folder: str) -> dict[str, int]:
    """runwayml/stable-diffusion-v1-5's UNet, VAE, text encoder and default (PNDM) scheduler.

    The tokenizer is the tiny CLIP one (the text encoder keeps CLIP's 49,408-token table): prompts are
    padded to 77 tokens whatever the vocabulary, so the work per prompt is the same."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dnd.tiny import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer(model_max_length=77)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    )
    vae = AutoencoderKL(
        sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return {"sd_unet": count(unet), "sd_vae": count(vae), "sd_text_encoder": count(text_encoder)}


def save_clip(folder: str) -> int:
    """openai/clip-vit-base-patch16's sizes (tiny tokenizer, CLIP's 49,408-token table)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from dnd.tiny import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer(model_max_length=77)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16),
        projection_dim=512,
    )
    model = CLIPModel(config)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 224},
                                                                 crop_size={"height": 224, "width": 224}),
                              tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return count(model)


def build_models(folder: str) -> tuple[dict[str, int], float]:
    """Saves the three Hugging Face models under ``folder`` (kept when it already holds them, for
    --models reuse) and returns the parameter counts and the seconds building took."""
    import torch
    import torchvision

    started = time.time()
    marker = os.path.join(folder, "params.json")
    if os.path.exists(marker):
        with open(marker) as f:
            return json.load(f), 0.0
    torch.manual_seed(0)
    params = {"resnet50": count(torchvision.models.resnet50(weights=None))}
    for name, save in (("blip", save_blip), ("stable_diffusion", save_stable_diffusion), ("clip", save_clip)):
        log(f"building {name} at full size with random weights")
        counts = save(os.path.join(folder, name))
        params.update(counts if isinstance(counts, dict) else {name: counts})
        gc.collect()  # one full-size model in memory at a time
    with open(marker, "w") as f:
        json.dump(params, f)
    return params, time.time() - started


# ---------------------------------------------------------------------------------------------
# the run


def run_config(sizes: dict, models: str, llm_url: str, out: str, cuda: bool) -> dict:
    # examples/resnet50_imagenet.yaml's choices: four pools sharing one GPU, BLIP in float16, CLIP and
    # the target in float32; the generator's dtype is left at "auto" (float16 on CUDA).
    gpus = 0.25 if cuda else 0.0
    generator_batch = 20 if cuda else 4  # two concepts' Q=10 images per pipeline call on a GPU
    size = sizes["image_size"]
    return {
        "method": "paper",
        "target": {"model": "torchvision:resnet50", "weights": "none", "batch_size": 256 if cuda else 32,
                   "num_gpus": gpus},
        "layers": LAYERS,
        "neurons": {layer: f"0:{sizes['neurons_per_layer']}" for layer in LAYERS},
        "probe": {"sources": [{"uri": f"gen://shapes?n={sizes['probe_images']}&seed=0&size=224"}]},
        "step1": {"top_k": sizes["top_k"], "crops_per_image": sizes["crops_per_image"]},
        "captioner": {"backend": "hf", "batch_size": 64 if cuda else 8, "num_gpus": gpus,
                      "options": {"model": os.path.join(models, "blip"), "dtype": "float16" if cuda else "float32",
                                  "max_new_tokens": sizes["caption_max_new_tokens"]}},
        "summarizer": {"backend": "openai", "candidates": sizes["candidates"],
                       "options": {"model": "stub", "base_url": llm_url, "api_key_env": "none", "max_concurrency": 16}},
        "generator": {"backend": "diffusers", "images_per_concept": sizes["images_per_concept"],
                      "batch_size": generator_batch, "num_gpus": gpus,
                      # No safety checker: with random weights it would refuse images at random.
                      "options": {"model": os.path.join(models, "stable_diffusion"), "steps": sizes["steps"],
                                  "height": size, "width": size, "batch_size": generator_batch, "safety": False}},
        "selection": {"embedder": {"backend": "clip", "batch_size": 128 if cuda else 32, "num_gpus": gpus,
                                   "options": {"model": os.path.join(models, "clip")}}},
        "seed": 0,
        "output": {"uri": out},
        "ray": {"num_cpus": os.cpu_count()} if cuda else {"num_cpus": 2, "object_store_memory": 500_000_000},
    }


def touch(backend: Any) -> None:
    """Reads every weight once: safetensors are memory-mapped, so on the CPU a load returns before
    the weights are read, and the first model call would pay for it instead."""
    import torch

    for value in vars(backend).values():
        modules = [value] if isinstance(value, torch.nn.Module) else list(getattr(value, "components", {}).values())
        for module in modules:
            if isinstance(module, torch.nn.Module):
                for parameter in module.parameters():
                    parameter.detach().sum().item()


def standalone_loads(config: dict) -> dict[str, float]:
    """Seconds to build each model backend as its actor does (same options, same device), once, here,
    and read its weights (``touch``)."""
    import torch

    from dnd.backends import load_backends
    from dnd.captioning.base import CAPTIONERS
    from dnd.config import load_config
    from dnd.generation.base import GENERATORS
    from dnd.generation.stage import planned_stage
    from dnd.registry import build_stage_backend
    from dnd.selection.embedder import EMBEDDERS

    load_backends()
    run = load_config(config)
    out = {}
    for name, registry, stage in (("captioner", CAPTIONERS, run.captioner),
                                  ("generator", GENERATORS, planned_stage(run.generator)),
                                  ("embedder", EMBEDDERS, run.selection.embedder)):
        started = time.time()
        backend = build_stage_backend(registry, stage)
        touch(backend)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out[name] = round(time.time() - started, 2)
        del backend
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def timed_generation(seconds: list[float]) -> Callable[[], None]:
    """Wraps the engine's Step 3 generation (looked up by name when Step 3 starts) to time it;
    returns the undo."""
    import dnd.generation.stage as stage

    original = stage.run_generation

    def run_generation(*args, **kwargs):
        started = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.time() - started)

    stage.run_generation = run_generation
    return lambda: setattr(stage, "run_generation", original)


def per(value: float | None, n: int) -> float | None:
    return None if value is None or not n else round(value / n, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="full size even without CUDA (the default on CUDA)")
    parser.add_argument("--neurons", type=int, help="neurons per layer (layer4 and fc)")
    parser.add_argument("--images", type=int, help="generated probe images")
    parser.add_argument("--models", help="folder for the saved models, reused when it holds them (default: a temp dir)")
    parser.add_argument("--keep", help="folder for the run's output (default: a temp dir, removed)")
    parser.add_argument("--no-load-times", action="store_true", help="skip the standalone model-load timing")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    full = args.full or cuda
    sizes = dict(FULL if full else REDUCED)
    if args.neurons:
        sizes["neurons_per_layer"] = args.neurons
    if args.images:
        sizes["probe_images"] = args.images
    scratch = tempfile.mkdtemp(prefix="dnd-gpu-profile-")
    models = args.models or os.path.join(scratch, "models")
    out = args.keep or os.path.join(scratch, "run")
    os.makedirs(models, exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()[0]
    try:
        params, build_s = build_models(models)
        log(f"models ready in {build_s:.0f}s: {params}")
        with StubLLM() as llm:
            config = run_config(sizes, models, llm.url, out, cuda)
            load_s = {} if args.no_load_times else standalone_loads(config)
            log(f"standalone model loads: {load_s}")
            generation_s: list[float] = []
            undo = timed_generation(generation_s)
            try:
                from dnd.pipeline import dissect

                dissect(config, overwrite=True)
            finally:
                undo()
            llm_requests = sum(llm.counts.values())
        with open(os.path.join(out, "_SUCCESS")) as f:
            success = json.load(f)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        # The scratch folder holds only what --models and --keep did not put elsewhere.
        shutil.rmtree(scratch, ignore_errors=True)

    timings, counts, calls = success["timings_s"], success["counts"], success["model_calls"]
    neurons = int(counts["neurons"])
    generation = sum(generation_s) if generation_s else None
    step3 = timings.get("step3_selection_s")
    stages = {
        "step1_pass_a": timings.get("step1_activations_s"),
        "step1_pass_b": timings.get("step1_crops_s"),
        "step2a_captioning": timings.get("step2a_captions_s"),
        "step2b_summarizing": timings.get("step2b_concepts_s"),
        "step3_generation": None if generation is None else round(generation, 3),
        "step3_scoring": None if step3 is None or generation is None else round(step3 - generation, 3),
    }
    loads = {"step2a_captioning": load_s.get("captioner"), "step3_generation": load_s.get("generator"),
             "step3_scoring": load_s.get("embedder")}
    generated = int(calls.get("generator_images", 0))
    unique_concepts = int((success.get("generation") or {}).get("unique_concepts", 0))
    units = {  # what each stage's work scales with, to rescale to other sizes
        "step1_pass_a": ("probe_image", int(counts.get("images_used", 0))),
        "step1_pass_b": ("top_image", int(counts.get("top_images_unique", 0))),
        "step2a_captioning": ("caption", int(calls.get("captioner_images", 0))),
        "step2b_summarizing": ("llm_request", int(calls.get("summarizer_requests", 0))),
        "step3_generation": ("generated_image", generated),
        "step3_scoring": ("generated_image", generated),
    }
    per_unit = {f"{stage}_per_{unit}": per(stages[stage] if loads.get(stage) is None else
                                          max(0.0, stages[stage] - loads[stage]), n)
                for stage, (unit, n) in units.items() if stages[stage] is not None}
    q, n_candidates = sizes["images_per_concept"], sizes["candidates"]
    gen_per_image = per_unit.get("step3_generation_per_generated_image")
    device = f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu"
    result = {
        "benchmark": "gpu_profile",
        "device": device,
        "reduced": not full,
        "reductions": {} if full else {
            # "full": what a full-size run uses, the paper's value where the paper's fits a profile.
            key: {"used": sizes[key], "full": FULL[key]} for key in sizes if sizes[key] != FULL[key]
        },
        "dtype": {"target": "float32", "captioner": "float16" if cuda else "float32",
                  "generator": "float16 (dtype auto)" if cuda else "float32 (dtype auto)", "embedder": "float32"},
        "sizes": {**sizes, "layers": LAYERS, "neurons": neurons, "probe_image_side": 224,
                  "generator_batch": config["generator"]["batch_size"], "captioner_batch": config["captioner"]["batch_size"],
                  "scheduler": "PNDMScheduler (SD-1.5 default)", "safety_checker": False},
        "params": params,
        "per_neuron_s": {stage: per(value, neurons) for stage, value in stages.items()},
        "per_neuron_s_less_model_load": {stage: per(None if value is None else max(0.0, value - (loads.get(stage) or 0.0)), neurons)
                                         for stage, value in stages.items()},
        "per_unit_s_less_model_load": per_unit,
        # Step 3 per neuron at the paper's N x Q with no concept shared between neurons (the stub's
        # summaries of random captions repeat, so fewer concepts may be generated than the paper's
        # N=5). Only at full size: fewer steps and smaller images do not scale linearly.
        "step3_generation_s_per_neuron_at_paper_n_q": None if gen_per_image is None or not full else
        round(gen_per_image * n_candidates * q, 3),
        "stage_s": stages,
        "model_load_s": load_s,
        "counts": {"neurons": neurons, "probe_images": counts.get("images_used"), "top_images": counts.get("top_images_unique"),
                   "crops": counts.get("crops"), "captions": calls.get("captioner_images"),
                   "llm_requests": calls.get("summarizer_requests"), "llm_stub_requests": llm_requests,
                   "unique_concepts": unique_concepts, "generated_images": generated,
                   "refused_images": (success.get("generation") or {}).get("refused"),
                   "target_generated_images": calls.get("target_generated_images"), "embedder_inputs": calls.get("embedder_inputs")},
        "timed_how": {
            "stages": "_SUCCESS timings_s of dnd.pipeline.dissect (Ray actor start-up and model loads included)",
            "step3_generation": "the engine's run_generation wrapped with a timer; step3_scoring = step3_selection_s - it",
            "model_load_s": "standalone: each backend built once in the driver with its stage's options and device, "
                            "every weight read once; actor start-up and imports are not in it",
            "less_model_load": "stage seconds minus the standalone load of its model (approximate)",
        },
        "total_s": timings.get("total_s"),
        "build_models_s": round(build_s, 1),
        "models_reused": bool(args.models) and build_s == 0.0,
        "wall_s": round(time.time() - started, 1),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "versions": {k: v for k, v in success.get("versions", {}).items() if k in ("torch", "diffusers", "transformers", "ray")},
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
