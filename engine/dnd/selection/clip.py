"""CLIP image and text embeddings (step 3's image-product scoring, and the evaluations' CLIP
similarity) from a Hugging Face CLIP model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dnd.backends import dtype_option, model_name, move_inputs, positive_int, resolve_device, resolve_dtype
from dnd.errors import ConfigError
from dnd.selection.embedder import EMBEDDERS
from dnd.tiny import is_random_tiny, tiny_clip_tokenizer, tiny_weights_seeded

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

#: The paper's CLIP (section 3.3, image products; section 4 CLIP cosine).
DEFAULT_MODEL = "openai/clip-vit-base-patch16"


@EMBEDDERS.register("clip")
class CLIPEmbedder:
    """L2-normalised CLIP embeddings of images and texts, computed ``batch_size`` at a time."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 64,
    ):
        self.model_name = model_name(model)
        self.batch_size = positive_int("batch_size", batch_size)
        self.device = resolve_device(device)
        self.dtype = dtype
        self._torch_dtype = resolve_dtype(dtype, self.device)
        if is_random_tiny(model):
            self.processor, self.model = build_tiny_clip()
            self.model.to(self._torch_dtype)
        else:
            # Loaded in the requested dtype already, keeping any modules the model pins to float32.
            self.processor, self.model = _load_pretrained(model, self._torch_dtype)
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.projection_dim)
        # Texts longer than CLIP's context are cut rather than failing the whole batch.
        self._max_text_tokens = int(self.model.config.text_config.max_position_embeddings)
        self.cache_key = f"clip|{self.model_name}|dtype={dtype}"

    def embed_images(self, images: "list[Image.Image]") -> "np.ndarray":
        def encode(chunk: list) -> Any:
            inputs = self.processor(images=[image.convert("RGB") for image in chunk], return_tensors="pt")
            return self.model.get_image_features(
                **move_inputs(inputs, self.device, self._torch_dtype)
            )

        return self._embed(list(images), encode)

    def embed_texts(self, texts: list[str]) -> "np.ndarray":
        bad = [text for text in texts if not isinstance(text, str)]
        if bad:
            raise ConfigError(f"texts to embed must be strings, got {bad[0]!r}")

        def encode(chunk: list) -> Any:
            inputs = self.processor(
                text=chunk,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self._max_text_tokens,
            )
            return self.model.get_text_features(**move_inputs(inputs, self.device, self._torch_dtype))

        return self._embed(list(texts), encode)

    def _embed(self, items: list, encode: Any) -> "np.ndarray":
        import numpy as np
        import torch

        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                features = encode(items[start : start + self.batch_size])
                # transformers 5 returns a model output whose pooler_output is the projection;
                # earlier releases return the projected tensor itself.
                if not isinstance(features, torch.Tensor):
                    features = features.pooler_output
                # Normalise in float32 so half-precision models still give unit-length rows.
                features = features.float()
                features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                parts.append(features.cpu().numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)


def _load_pretrained(model: str, torch_dtype: Any) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPProcessor

    try:
        processor = CLIPProcessor.from_pretrained(model)
        clip = CLIPModel.from_pretrained(model, **dtype_option("transformers", torch_dtype))
    except OSError as exc:
        raise ConfigError(
            f"cannot load the CLIP model {model!r}: {str(exc).rstrip('.')}. Expected a Hugging Face "
            f"id whose files are in the local cache (or reachable online) or a local directory, "
            f"e.g. {DEFAULT_MODEL!r}."
        ) from None
    return processor, clip


def build_tiny_clip() -> tuple[Any, Any]:
    """The real CLIP classes at toy size: 32-pixel images, 2-layer towers, 16-d embeddings."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = tiny_clip_tokenizer(model_max_length=77)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            projection_dim=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    with tiny_weights_seeded():
        model = CLIPModel(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer), model
