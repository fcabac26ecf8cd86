"""Step 2A with a vision-capable chat model behind any OpenAI-compatible endpoint (the paper's
A.4.4 variant, which captions with GPT-4o instead of BLIP)."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from typing import TYPE_CHECKING, Any

from dnd.backends import positive_int
from dnd.captioning.base import CAPTIONERS
from dnd.captioning.cleanup import decoded_caption
from dnd.chat.caller import ChatCaller, Outcome
from dnd.chat.compat import RetryPolicy, read_api_key
from dnd.chat.limits import DEFAULT_INITIAL_CONCURRENCY, DEFAULT_MAX_CONCURRENCY, Limits
from dnd.errors import ConfigError
from dnd.usage import Usage

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: The model of the paper's multimodal ablation (A.4.4).
DEFAULT_MODEL = "gpt-4o"
DEFAULT_PROMPT = (
    "Write a one-sentence caption for this image that names its main objects, their colours and "
    "the scene. Answer with the caption only."
)


@CAPTIONERS.register("openai-vision")
class OpenAIVisionCaptioner:
    """One caption per image, each image sent as a PNG data URL in its own chat request.

    The requests of one :meth:`caption` call run concurrently, through the adaptive gate the
    summarizer shares (:mod:`dnd.chat.compat`): at most ``max_concurrency`` (default 128) in
    flight, starting at ``initial_concurrency`` (default 2), growing while the endpoint answers and
    shrinking on 429/503, within the optional ``requests_per_minute``/``tokens_per_minute``
    budgets. Key, timeout and retries (``max_retries``, ``backoff_s``, ``backoff_cap_s``) follow
    the same one policy. An image whose request still fails gets the caption "" and an entry in
    :attr:`errors`.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        prompt: str = DEFAULT_PROMPT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        timeout_s: float = 60,
        max_retries: int = 5,
        temperature: float = 0.0,
        max_tokens: int = 60,
        backoff_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        initial_concurrency: int = DEFAULT_INITIAL_CONCURRENCY,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
    ):
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"model must name a vision-capable chat model such as 'gpt-4o', got {model!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"prompt must be a non-empty string, got {prompt!r}")
        self.limits = Limits.checked("captioner 'openai-vision'", max_concurrency, initial_concurrency,
                                     requests_per_minute, tokens_per_minute)
        self.max_tokens = positive_int("max_tokens", max_tokens)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be an integer ≥ 0, got {max_retries!r}")
        for name, value in (("timeout_s", timeout_s), ("temperature", temperature), ("backoff_s", backoff_s),
                            ("backoff_cap_s", backoff_cap_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number ≥ 0, got {value!r}")
        if timeout_s == 0:
            raise ConfigError("timeout_s must be greater than 0, got 0")
        api_key = read_api_key(api_key_env, "captioner 'openai-vision'")
        self.model = model
        self.prompt = prompt
        self.temperature = float(temperature)
        self.usage = Usage()
        self._caller = ChatCaller(api_key, base_url, float(timeout_s),
                                  RetryPolicy(max_retries, float(backoff_s), float(backoff_cap_s)), self.usage,
                                  self.limits)
        # The endpoint as the client resolves it (OpenAI's, or OPENAI_BASE_URL, when base_url is
        # None) keys the cache; the client built here is the one that sends the requests.
        self.base_url = str(self._caller.client().base_url)
        #: One entry per image that got no caption: ``{"index", "error", "attempts"}``; the index is
        #: the image's position in the :meth:`caption` call that failed it.
        self.errors: list[dict] = []
        self._errors_lock = threading.Lock()

        prompt_digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]
        self.cache_key = (
            f"openai-vision|{model}|{self.base_url}|prompt={prompt_digest}|temperature={self.temperature}"
            f"|max_tokens={self.max_tokens}"
        )

    def caption(self, images: "list[Image.Image]") -> list[str]:
        if not images:
            return []
        outcomes = self._caller.create_many([self._request(image) for image in images])
        return [self._caption_of(index, outcome) for index, outcome in enumerate(outcomes)]

    def _request(self, image: "Image.Image") -> dict[str, Any]:
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": self.prompt},
                    {"type": "image_url", "image_url": {"url": _png_data_url(image)}},
                ],
            }
        ]
        return dict(model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens)

    def _caption_of(self, index: int, outcome: Outcome) -> str:
        if outcome.response is None:
            return self._fail(index, outcome.error or "no response", outcome.attempts)
        return self._read(index, outcome.response, outcome.attempts)

    def _read(self, index: int, response: Any, attempts: int) -> str:
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

    def _fail(self, index: int, error: str, attempts: int) -> str:
        self._caller.count(failures=1)
        with self._errors_lock:
            self.errors.append({"index": index, "error": error, "attempts": attempts})
        return ""


def _png_data_url(image: "Image.Image") -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
