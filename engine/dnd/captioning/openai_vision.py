"""Step 2A with a vision-capable chat model behind any OpenAI-compatible endpoint (the paper's
A.4.4 variant, which captions with GPT-4o instead of BLIP)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dnd.backends import positive_int
from dnd.captioning.base import CAPTIONERS
from dnd.captioning.cleanup import decoded_caption
from dnd.concepts.base import Usage
from dnd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: The model of the paper's multimodal ablation (A.4.4).
DEFAULT_MODEL = "gpt-4o"
DEFAULT_PROMPT = (
    "Write a one-sentence caption for this image that names its main objects, their colours and "
    "the scene. Answer with the caption only."
)
#: Statuses worth asking again: request timeout, conflict, rate limit, and any server error.
_RETRY_STATUSES = frozenset({408, 409, 429})
#: Longest wait between two attempts, whatever the backoff or the server's Retry-After says.
_MAX_DELAY_S = 60.0


@CAPTIONERS.register("openai-vision")
class OpenAIVisionCaptioner:
    """One caption per image, each image sent as a PNG data URL in its own chat request.

    Requests run ``max_concurrency`` at a time. Rate limits, server errors, timeouts and dropped
    connections are retried here (the client's own retries are off, so that every retry is counted)
    with exponential backoff from ``backoff_s``, or after the server's Retry-After when it sends one.
    An image whose request still fails gets the caption "" and an entry in :attr:`errors`.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        prompt: str = DEFAULT_PROMPT,
        max_concurrency: int = 8,
        timeout_s: float = 60,
        max_retries: int = 5,
        temperature: float = 0.0,
        max_tokens: int = 60,
        backoff_s: float = 1.0,
    ):
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"model must name a vision-capable chat model such as 'gpt-4o', got {model!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"prompt must be a non-empty string, got {prompt!r}")
        self.max_concurrency = positive_int("max_concurrency", max_concurrency)
        self.max_tokens = positive_int("max_tokens", max_tokens)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be an integer ≥ 0, got {max_retries!r}")
        for name, value in (("timeout_s", timeout_s), ("temperature", temperature), ("backoff_s", backoff_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number ≥ 0, got {value!r}")
        if timeout_s == 0:
            raise ConfigError("timeout_s must be greater than 0, got 0")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ConfigError(f"api_key_env must name an environment variable, got {api_key_env!r}")
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ConfigError(
                f"the openai-vision captioner reads its API key from the environment variable "
                f"{api_key_env!r}, which is not set; set it (any non-empty value for a local server "
                f"that ignores keys) or name another variable with api_key_env"
            )
        from openai import OpenAI

        self.model = model
        self.prompt = prompt
        self.max_retries = max_retries
        self.temperature = float(temperature)
        self.backoff_s = float(backoff_s)
        self.timeout_s = float(timeout_s)
        self._client = OpenAI(api_key=api_key, base_url=base_url, timeout=self.timeout_s, max_retries=0)
        self.base_url = str(self._client.base_url)
        self.usage = Usage()
        #: One entry per image that got no caption: ``{"index", "error", "attempts"}``; the index is
        #: the image's position in the :meth:`caption` call that failed it.
        self.errors: list[dict] = []
        self._lock = threading.Lock()

        prompt_digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]
        self.cache_key = (
            f"openai-vision|{model}|{self.base_url}|prompt={prompt_digest}|temperature={self.temperature}"
            f"|max_tokens={self.max_tokens}"
        )

    def caption(self, images: "list[Image.Image]") -> list[str]:
        if not images:
            return []
        workers = min(self.max_concurrency, len(images))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-vision") as pool:
            return list(pool.map(self._caption_one, range(len(images)), images))

    def _caption_one(self, index: int, image: "Image.Image") -> str:
        import openai

        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": self.prompt},
                    {"type": "image_url", "image_url": {"url": _png_data_url(image)}},
                ],
            }
        ]
        attempts = 0
        while True:
            attempts += 1
            self._count(requests=1)
            try:
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                )
            except openai.OpenAIError as exc:
                if not _retryable(exc) or attempts > self.max_retries:
                    return self._fail(index, exc, attempts)
                self._count(retries=1)
                time.sleep(self._delay(attempts - 1, exc))
                continue
            return self._read(index, response, attempts)

    def _read(self, index: int, response: Any, attempts: int) -> str:
        usage = getattr(response, "usage", None)
        self._count(
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )
        choices = getattr(response, "choices", None) or []
        message = choices[0].message if choices else None
        if message is None:
            return self._fail(index, "the response has no choices", attempts)
        if getattr(message, "refusal", None):
            return self._fail(index, f"the model refused: {message.refusal}", attempts)
        caption = decoded_caption(message.content)
        if not caption:
            return self._fail(index, "the model answered with an empty caption", attempts)
        return caption

    def _fail(self, index: int, error: Any, attempts: int) -> str:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        with self._lock:
            self.usage.failures += 1
            self.errors.append({"index": index, "error": text, "attempts": attempts})
        return ""

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, amount in increments.items():
                setattr(self.usage, name, getattr(self.usage, name) + amount)

    def _delay(self, attempt: int, exc: Exception) -> float:
        retry_after = _retry_after_s(exc)
        if retry_after is not None:
            return min(retry_after, _MAX_DELAY_S)
        # Jitter spreads the retries of many concurrent requests that failed together.
        return min(self.backoff_s * 2**attempt, _MAX_DELAY_S) * random.uniform(0.5, 1.0)


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _RETRY_STATUSES or exc.status_code >= 500
    return False


def _retry_after_s(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the backoff is a fine substitute


def _png_data_url(image: "Image.Image") -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
