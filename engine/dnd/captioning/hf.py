"""Step 2A with any Hugging Face image-to-text model (BLIP by default, as in the paper; BLIP-2, GIT,
Florence-2, chat vision-language models such as LLaVA or Qwen2-VL through the same class)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dnd.backends import (
    dtype_option,
    model_name,
    move_inputs,
    positive_int,
    resolve_device,
    resolve_dtype,
    seeded,
)
from dnd.captioning.base import CAPTIONERS
from dnd.captioning.cleanup import decoded_caption
from dnd.errors import ConfigError
from dnd.tiny import BLIP_DECODER_START, is_random_tiny, tiny_bert_tokenizer, tiny_weights_seeded

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: The paper's captioner (section 3, step 2A).
DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"
#: What chat vision-language models are asked when no prompt is configured; captioning models
#: without a chat template caption unconditionally instead.
DEFAULT_CHAT_PROMPT = "Describe this image in one short sentence."
#: Generation here is greedy or beam search, which draw no random numbers; the seed only guards
#: against a model whose forward pass samples (e.g. dropout left on by a custom class).
_CAPTION_SEED = 0


@CAPTIONERS.register("hf")
class HFCaptioner:
    """One caption per image from a Hugging Face image-to-text model, batched on one device."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "float32",
        max_new_tokens: int = 30,
        num_beams: int = 1,
        prompt: str | None = None,
    ):
        self.model_name = model_name(model)
        self.max_new_tokens = positive_int("max_new_tokens", max_new_tokens)
        self.num_beams = positive_int("num_beams", num_beams)
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise ConfigError(f"prompt must be a non-empty string or None, got {prompt!r}")
        self.device = resolve_device(device)
        self.dtype = dtype
        self._torch_dtype = resolve_dtype(dtype, self.device)

        if is_random_tiny(model):
            self.processor, self.model = build_tiny_blip()
            self.model.to(self._torch_dtype)
        else:
            # Loaded in the requested dtype already, keeping any modules the model pins to float32.
            self.processor, self.model = _load_pretrained(model, self._torch_dtype)
        self.model.to(self.device).eval()
        self._tokenizer = getattr(self.processor, "tokenizer", self.processor)

        # Chat vision-language models need their template (with its image placeholder) around the
        # instruction; plain captioning models take the prompt, if any, as the caption's start.
        self.chat = bool(getattr(self.processor, "chat_template", None))
        self.prompt = (prompt or DEFAULT_CHAT_PROMPT) if self.chat else prompt
        if self.chat or self.prompt:
            # Decoder-only models continue the last position, so batched prompts pad on the left.
            self._tokenizer.padding_side = "left"

        self.cache_key = (
            f"hf-caption|{self.model_name}|dtype={dtype}|max_new_tokens={self.max_new_tokens}"
            f"|num_beams={self.num_beams}|prompt={self.prompt!r}|chat={self.chat}"
        )

    def caption(self, images: "list[Image.Image]") -> list[str]:
        if not images:
            return []
        import torch

        rgb = [image.convert("RGB") for image in images]
        inputs = self._inputs(rgb)
        with torch.inference_mode(), seeded(self.device, _CAPTION_SEED):
            sequences = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
            )
        sequences = _without_prompt_tokens(sequences, inputs.get("input_ids"))
        texts = self._tokenizer.batch_decode(sequences, skip_special_tokens=True)
        # In chat mode the instruction was sliced off with the prompt tokens; a captioning model's
        # conditional prefix comes back in its output and is removed from the text.
        prefix = None if self.chat else self.prompt
        # Artefact clean-up, when the run asks for it, is the caption stage's (captioner.cleanup).
        return [decoded_caption(text, prompt=prefix) for text in texts]

    def _inputs(self, images: "list[Image.Image]") -> dict:
        if self.chat:
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}
            ]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            encoded = self.processor(
                images=images, text=[text] * len(images), return_tensors="pt", padding=True
            )
        elif self.prompt:
            encoded = self.processor(
                images=images, text=[self.prompt] * len(images), return_tensors="pt", padding=True
            )
        else:
            encoded = self.processor(images=images, return_tensors="pt")
        return move_inputs(encoded, self.device, self._torch_dtype)


def _without_prompt_tokens(sequences: Any, input_ids: Any) -> Any:
    """Decoder-only models return prompt + continuation; keep the continuation only."""
    if input_ids is None or sequences.shape[1] < input_ids.shape[1]:
        return sequences
    length = input_ids.shape[1]
    if bool((sequences[:, :length] == input_ids).all()):
        return sequences[:, length:]
    return sequences


def _load_pretrained(model: str, torch_dtype: Any) -> tuple[Any, Any]:
    import transformers

    # AutoModelForImageTextToText covers BLIP, BLIP-2, GIT, vision-encoder-decoder and the chat
    # VLMs in current transformers; older releases named the captioning subset Vision2Seq.
    auto_classes = [
        getattr(transformers, name)
        for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq")
        if hasattr(transformers, name)
    ]
    try:
        processor = transformers.AutoProcessor.from_pretrained(model)
    except OSError as exc:
        raise ConfigError(
            f"cannot load the captioning model {model!r}: {str(exc).rstrip('.')}. Expected a Hugging "
            "Face id whose files are in the local cache (or reachable online) or a local directory."
        ) from None
    unsupported = None
    for auto_class in auto_classes:
        try:
            return processor, auto_class.from_pretrained(model, **dtype_option("transformers", torch_dtype))
        except OSError as exc:
            raise ConfigError(f"cannot load the captioning model {model!r}: {exc}") from None
        except ValueError as exc:
            unsupported = exc  # this auto class does not know the architecture; try the next
    raise ConfigError(
        f"model {model!r} is not an image-to-text model transformers can generate captions with "
        f"({unsupported}); expected e.g. {DEFAULT_MODEL!r} or 'Salesforce/blip2-opt-2.7b'"
    )


def build_tiny_blip() -> tuple[Any, Any]:
    """The real BLIP captioning classes at toy size: 32-pixel images, 2-layer towers, random weights."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = tiny_bert_tokenizer()
    vocab = tokenizer.get_vocab()
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            encoder_hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            bos_token_id=vocab[BLIP_DECODER_START],
            eos_token_id=vocab["[SEP]"],
            sep_token_id=vocab["[SEP]"],
            pad_token_id=vocab["[PAD]"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            # BLIP's vision default (1e-10) would make every image look alike to the decoder.
            initializer_range=0.5,
        ),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    with tiny_weights_seeded():
        model = BlipForConditionalGeneration(config)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    return processor, model
