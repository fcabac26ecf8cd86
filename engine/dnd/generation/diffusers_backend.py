"""Step 3's image generation with any diffusers text-to-image pipeline (Stable Diffusion by default,
as in the paper)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dnd.backends import dtype_option, model_name, positive_int, resolve_device, resolve_dtype
from dnd.errors import ConfigError, DndError
from dnd.generation.base import GENERATORS, Generated
from dnd.tiny import is_random_tiny, tiny_clip_tokenizer, tiny_weights_seeded

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: The paper's generator (section 3, step 3).
DEFAULT_MODEL = "runwayml/stable-diffusion-v1-5"
#: Denoising steps when none are configured: Stable Diffusion's usual 50, and 2 for the toy
#: random-tiny pipeline, whose images carry no meaning however long it denoises.
DEFAULT_STEPS = 50
TINY_STEPS = 2
#: An output no brighter than this everywhere is black: what Stable Diffusion's safety checker
#: substitutes, and what NaNs in half precision decode to.
_BLACK_LEVEL = 3
#: What ``dtype: auto`` means per device type: Stable Diffusion's usual half precision on CUDA,
#: where it halves memory and runs on the tensor cores with no visible change in the images (the
#: black-output check below catches the rare NaN); full precision elsewhere, since CPUs gain nothing
#: from float16 and ``resolve_dtype`` refuses it there.
AUTO_DTYPE = {"cuda": "float16"}


def concrete_dtype(dtype: str, device: str) -> str:
    """The dtype name ``dtype`` stands for on ``device`` (a resolved device such as "cuda:0" or
    "cpu"): ``auto`` becomes :data:`AUTO_DTYPE`'s choice, other names stay as they are."""
    if dtype != "auto":
        return dtype
    return AUTO_DTYPE.get(device.split(":")[0], "float32")


@GENERATORS.register("diffusers")
class DiffusersGenerator:
    """Images for (prompt, seed) requests; each request is reproducible on its own, whatever batch
    it arrives in."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        steps: int | None = None,
        guidance_scale: float = 7.5,
        scheduler: str | None = None,
        height: int | None = None,
        width: int | None = None,
        batch_size: int | None = None,
        safety: bool = True,
    ):
        self.model_name = model_name(model)
        tiny = is_random_tiny(model)
        if steps is None:
            steps = TINY_STEPS if tiny else DEFAULT_STEPS
        self.steps = positive_int("steps", steps)
        number = isinstance(guidance_scale, (int, float)) and not isinstance(guidance_scale, bool)
        if not number or guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be a number ≥ 0, got {guidance_scale!r}")
        self.guidance_scale = float(guidance_scale)
        self.height = None if height is None else positive_int("height", height)
        self.width = None if width is None else positive_int("width", width)
        # None: each call runs whole, so the stage's generator.batch_size (images from several
        # concepts) is one pipeline call; a number caps a call's images to bound the pipeline's memory.
        self.batch_size = None if batch_size is None else positive_int("batch_size", batch_size)
        if not isinstance(safety, bool):
            raise ConfigError(f"safety must be true or false, got {safety!r}")
        self.safety = safety
        scheduler_class = _scheduler_class(scheduler)  # checked before the slow load
        self.scheduler = scheduler
        self.device = resolve_device(device)
        # The name actually run, so that cache_key (the Serve deployment's identity) says float16
        # when "auto" ran in half precision, and float32 — as before "auto" existed — on the CPU.
        dtype = concrete_dtype(dtype, self.device)
        self.dtype = dtype
        torch_dtype = resolve_dtype(dtype, self.device)

        if tiny:
            self.pipeline = build_tiny_stable_diffusion()
            if dtype != "float32":
                self.pipeline.to(dtype=torch_dtype)
        else:
            self.pipeline = _load_pretrained(model, torch_dtype, safety)
        self.pipeline.to(self.device)
        if scheduler_class is not None:
            self.pipeline.scheduler = scheduler_class.from_config(self.pipeline.scheduler.config)
        self.pipeline.set_progress_bar_config(disable=True)
        self._check_size()

        self.cache_key = (
            f"diffusers|{self.model_name}|dtype={dtype}|steps={self.steps}"
            f"|guidance_scale={self.guidance_scale}|scheduler={scheduler or 'default'}"
            f"|height={self.height or 'default'}|width={self.width or 'default'}|safety={safety}"
        )

    @staticmethod
    def planned_options(options: dict[str, Any], device: str) -> dict[str, Any]:
        """``options`` as they decide the images on ``device`` ("cpu" or "cuda", planned by the
        stage before any actor exists), with ``dtype`` always named: ``auto`` (the default, or
        absent) becomes the dtype it runs in there. Step 3 keys its cache and builds its actors from
        the result, so a float16 image never answers for a float32 request, while options that
        differ only in how they say float32 (none, ``auto`` on the CPU, ``float32``) share images."""
        planned = dict(options)
        dtype = planned.get("dtype", "auto")
        planned["dtype"] = concrete_dtype(dtype, device) if isinstance(dtype, str) else dtype
        return planned

    @property
    def size_multiple(self) -> int:
        """What image heights and widths must divide by: the VAE's downsampling factor."""
        return int(getattr(self.pipeline, "vae_scale_factor", 8))

    def _check_size(self, height: int | None = None, width: int | None = None) -> None:
        # Latents are the image downsampled by the VAE; a side that does not divide evenly fails
        # deep inside the pipeline, so it is refused here with the number it must divide by.
        factor = self.size_multiple
        height = self.height if height is None else height
        width = self.width if width is None else width
        for name, value in (("height", height), ("width", width)):
            if value is not None and value % factor:
                raise ConfigError(
                    f"{name} must be a multiple of {factor} for {self.model_name!r}, got {value}"
                )

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        steps: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> list[Generated]:
        """Images for (prompt, seed) pairs. ``steps``, ``height`` and ``width`` override the
        configured values for this call only (the Serve API's per-request options)."""
        if len(prompts) != len(seeds):
            raise DndError(
                f"generate needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds"
            )
        steps = self.steps if steps is None else positive_int("steps", steps)
        height = self.height if height is None else positive_int("height", height)
        width = self.width if width is None else positive_int("width", width)
        self._check_size(height, width)
        results: list[Generated] = []
        step = self.batch_size or max(1, len(prompts))
        for start in range(0, len(prompts), step):
            results.extend(
                self._generate_batch(
                    prompts[start : start + step],
                    seeds[start : start + step],
                    steps,
                    height,
                    width,
                )
            )
        return results

    def _generate_batch(
        self, prompts: list[str], seeds: list[int], steps: int, height: int | None, width: int | None
    ) -> list[Generated]:
        import torch

        # One generator per request, so each image's starting noise depends only on its own seed.
        # They live on the CPU: the same seed then gives the same noise on any GPU or on no GPU.
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        options: dict[str, Any] = {
            "num_inference_steps": steps,
            "guidance_scale": self.guidance_scale,
            "generator": generators,
            "output_type": "pil",
        }
        if height is not None:
            options["height"] = height
        if width is not None:
            options["width"] = width
        with torch.inference_mode():
            output = self.pipeline(prompt=list(prompts), **options)
        flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(prompts)
        return [_judge(image, bool(nsfw)) for image, nsfw in zip(output.images, flagged)]


def _judge(image: "Image.Image", nsfw: bool) -> Generated:
    import numpy as np

    if nsfw:
        return Generated(image=None, refused="nsfw filter")
    rgb = image.convert("RGB")
    if int(np.asarray(rgb).max()) <= _BLACK_LEVEL:
        return Generated(image=None, refused="empty output")
    return Generated(image=rgb)


def _scheduler_class(name: str | None) -> Any:
    if name is None:
        return None
    import diffusers

    candidate = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(candidate, type) and issubclass(candidate, diffusers.SchedulerMixin)):
        raise ConfigError(
            f"scheduler must be the name of a diffusers scheduler class such as "
            f"'DPMSolverMultistepScheduler' or 'DDIMScheduler', got {name!r}"
        )
    return candidate


def _load_pretrained(model: str, torch_dtype: Any, safety: bool) -> Any:
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    # Without safety, the checker is not even loaded; with it, the pipeline's own checker stays.
    options: dict[str, Any] = dtype_option("diffusers", torch_dtype)
    if not safety:
        options.update(safety_checker=None, requires_safety_checker=False)
    try:
        try:
            return AutoPipelineForText2Image.from_pretrained(model, **options)
        except ValueError:
            # Pipelines the auto class has no text-to-image mapping for still load generically.
            return DiffusionPipeline.from_pretrained(model, **options)
    except OSError as exc:
        raise ConfigError(
            f"cannot load the text-to-image pipeline {model!r}: {str(exc).rstrip('.')}. Expected a "
            f"Hugging Face id whose files are in the local cache (or reachable online) or a local "
            f"directory, e.g. {DEFAULT_MODEL!r}."
        ) from None


def build_tiny_stable_diffusion() -> Any:
    """The real Stable Diffusion classes at toy size: 32×32 images from 16×16×4 latents."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer(model_max_length=77)
    with tiny_weights_seeded():
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=4,
            norm_num_groups=4,
        )
        vae = AutoencoderKL(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            norm_num_groups=4,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=16,
                intermediate_size=32,
                projection_dim=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
