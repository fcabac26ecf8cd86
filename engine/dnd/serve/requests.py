"""Reading and checking HTTP requests: every malformed request becomes an :class:`ApiError` with a
4xx status and a message saying what was wrong, before any model sees it.

Pure functions over bytes and headers (no Ray, no Serve), so they are unit-tested directly. A request
can only carry data — images, prompts, seeds, a step count, a size — never a path or a model name.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from dnd.serve.settings import Limits

#: Largest seed accepted: torch generators take any 64-bit value; JSON clients handle 63 bits.
MAX_SEED = 2**63 - 1


class ApiError(Exception):
    """A request the API refuses: ``status`` is the HTTP status (4xx), ``message`` says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 when it exceeds ``limit`` bytes; an oversized body is never
    kept in memory.

    The excess of a body up to twice the limit is read and dropped before answering, so that a client
    which sends its whole body before reading gets the 413 rather than a reset connection; a larger
    one is answered at once (from its Content-Length, or as soon as the stream passes twice the limit).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, f"Content-Length {declared!r} is not a number") from None
        if size > 2 * limit:
            raise ApiError(413, f"request body is {size} bytes; this server accepts at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > 2 * limit:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise ApiError(413, f"request body exceeds {limit} bytes, the most this server accepts")
    return b"".join(chunks)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


# --- /v1/caption ----------------------------------------------------------------------------------


class CaptionJSON(BaseModel):
    """``{"images": ["<base64>", ...]}``: each entry base64 of an image file (a data: URL also works)."""

    model_config = ConfigDict(extra="forbid")
    images: list[StrictStr] = Field(..., description="Base64-encoded image files (PNG, JPEG, WebP, ...), or data: URLs.")


def caption_payloads(content_type: str | None, body: bytes, limits: "Limits") -> list[bytes]:
    """The encoded images of a /v1/caption request, in order, from any of its three forms:
    a raw image body, ``multipart/form-data`` (every part is an image), or JSON with base64 images."""
    kind = media_type(content_type)
    if not body:
        raise ApiError(400, "empty request body; send an image, a multipart form of images, or JSON {\"images\": [...]}")
    if kind == "application/json":
        payloads = _json_images(body)
    elif kind == "multipart/form-data":
        payloads = multipart_parts(content_type or "", body)
    elif kind.startswith("image/") or kind in ("application/octet-stream", ""):
        payloads = [body]
    else:
        raise ApiError(
            415,
            f"unsupported Content-Type {kind!r}; send image/* (or application/octet-stream) bytes, "
            "multipart/form-data, or application/json",
        )
    if not payloads:
        raise ApiError(422, "the request holds no image")
    if len(payloads) > limits.max_images:
        raise ApiError(422, f"{len(payloads)} images in one request; this server takes at most {limits.max_images}")
    return payloads


def _json_images(body: bytes) -> list[bytes]:
    data = parse_json(body)
    try:
        request = CaptionJSON.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "JSON body must be {\"images\": [\"<base64>\", ...]}: " + describe_errors(exc)) from None
    return [decode_base64(text, f"images[{i}]") for i, text in enumerate(request.images)]


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None


_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def decode_base64(text: str, where: str) -> bytes:
    """Standard or URL-safe base64 (line breaks allowed, a data: URL prefix allowed) to bytes."""
    text = _DATA_URL.sub("", text.strip(), count=1)
    text = _WHITESPACE.sub("", text)
    if not text:
        raise ApiError(422, f"{where}: empty string, expected a base64-encoded image")
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, f"{where}: not valid base64 ({exc})") from None
    if not data:
        raise ApiError(422, f"{where}: decodes to no bytes")
    return data


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of the parts of a ``multipart/form-data`` request, in order (RFC 7578).

    The delimiter cannot occur inside a part (RFC 2046), so splitting on it is exact; binary parts are
    returned byte for byte.
    """
    match = re.search(r'boundary="?([^";,]+)"?', content_type, re.IGNORECASE)
    if not match:
        raise ApiError(400, "multipart/form-data without a boundary parameter in Content-Type")
    delimiter = b"\r\n--" + match.group(1).encode("latin-1")
    sections = (b"\r\n" + body).split(delimiter)
    if len(sections) < 3 or not sections[-1].startswith(b"--"):
        raise ApiError(400, "malformed multipart body: parts not delimited by the boundary, or no closing boundary")
    parts = []
    for index, section in enumerate(sections[1:-1]):
        # After the delimiter: optional transport padding, CRLF, headers, a blank line, the content.
        head_end = section.find(b"\r\n\r\n")
        if head_end < 0:
            raise ApiError(400, f"malformed multipart body: part {index} has no header/body separator")
        headers = section[:head_end].decode("latin-1").lower()
        if "content-transfer-encoding: base64" in headers:
            parts.append(decode_base64(section[head_end + 4 :].decode("latin-1"), f"part {index}"))
        else:
            parts.append(section[head_end + 4 :])
    return parts


def decode_image(data: bytes, where: str, max_pixels: int) -> "Image.Image":
    """An RGB image from encoded bytes, refused with 422 when empty, not an image, truncated, or
    larger than ``max_pixels`` (checked from the header, before the pixels are decoded)."""
    from PIL import Image

    from dnd.probe.decode import UnreadableImage, decode_rgb

    if not data:
        raise ApiError(422, f"{where}: empty, expected an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except Image.DecompressionBombError as exc:
        raise ApiError(422, f"{where}: image too large ({exc})") from None
    except Exception as exc:  # PIL raises many types for bytes that are not an image it knows
        raise ApiError(422, f"{where}: not an image this server can read ({type(exc).__name__}: {exc})") from None
    if width < 1 or height < 1:
        raise ApiError(422, f"{where}: image is {width}x{height} pixels")
    if width * height > max_pixels:
        raise ApiError(
            422, f"{where}: image is {width}x{height} = {width * height} pixels; this server takes at most {max_pixels}"
        )
    try:
        return decode_rgb(data)
    except UnreadableImage as exc:
        raise ApiError(422, f"{where}: {exc}") from None
    except Exception as exc:  # a decoder bug on hostile bytes is still the request's problem, not a 5xx
        raise ApiError(422, f"{where}: not a readable image ({type(exc).__name__}: {exc})") from None


# --- /v1/generate ---------------------------------------------------------------------------------


class GenerateJSON(BaseModel):
    """A /v1/generate request. Everything but ``prompts`` is optional; omitted values are the
    deployment's configured ones (seeds default to 0, 1, 2, ... in prompt order)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    prompts: list[StrictStr] = Field(..., description="Text prompts, one image each.")
    seeds: list[StrictInt] | None = Field(
        None, description="One seed per prompt (0 .. 2**63-1); the same prompt and seed always give the same image."
    )
    steps: StrictInt | None = Field(None, description="Denoising steps (the deployment's default when omitted).")
    height: StrictInt | None = Field(None, description="Image height in pixels (the model's default when omitted).")
    width: StrictInt | None = Field(None, description="Image width in pixels (the model's default when omitted).")
    response: Literal["auto", "base64", "uri"] = Field(
        "auto",
        alias="return",
        description=(
            "base64: PNGs inline; uri: PNGs written under the server's configured object-store prefix, URIs returned; "
            "auto: uri for requests of more than inline_max_images prompts when the server has a prefix, else base64."
        ),
    )


def generate_request(body: bytes, content_type: str | None, limits: "Limits", capabilities: dict) -> GenerateJSON:
    """A checked /v1/generate request. ``capabilities`` comes from the Generator deployment:
    which per-request options its backend takes and what the image sides must divide by."""
    if not body:
        raise ApiError(400, "empty request body; send JSON {\"prompts\": [...]}")
    if media_type(content_type) != "application/json":
        raise ApiError(415, f"unsupported Content-Type {media_type(content_type)!r}; send application/json")
    try:
        request = GenerateJSON.model_validate(parse_json(body))
    except ValidationError as exc:
        raise ApiError(422, "JSON body must be {\"prompts\": [\"...\"], ...}: " + describe_errors(exc)) from None
    n = len(request.prompts)
    if n == 0:
        raise ApiError(422, "prompts is empty; send at least one prompt")
    if n > limits.max_prompts:
        raise ApiError(422, f"{n} prompts in one request; this server takes at most {limits.max_prompts}")
    for i, prompt in enumerate(request.prompts):
        if not prompt.strip():
            raise ApiError(422, f"prompts[{i}] is blank")
        if len(prompt) > limits.max_prompt_chars:
            raise ApiError(422, f"prompts[{i}] has {len(prompt)} characters; at most {limits.max_prompt_chars}")
        if "\x00" in prompt:
            raise ApiError(422, f"prompts[{i}] contains a NUL character")
    if request.seeds is not None:
        if len(request.seeds) != n:
            raise ApiError(422, f"{len(request.seeds)} seeds for {n} prompts; send one seed per prompt or none")
        for i, seed in enumerate(request.seeds):
            if not 0 <= seed <= MAX_SEED:
                raise ApiError(422, f"seeds[{i}] = {seed} is outside 0 .. 2**63-1")
    supported = set(capabilities.get("request_options", ()))
    for name in ("steps", "height", "width"):
        value = getattr(request, name)
        if value is not None and name not in supported:
            raise ApiError(422, f"{name!r} cannot be set per request for this deployment's generator "
                                f"({capabilities.get('backend')!r}); leave it out")
    if request.steps is not None and not 1 <= request.steps <= limits.max_steps:
        raise ApiError(422, f"steps = {request.steps}; this server takes 1 .. {limits.max_steps}")
    multiple = int(capabilities.get("size_multiple") or 1)
    for name in ("height", "width"):
        value = getattr(request, name)
        if value is None:
            continue
        if not multiple <= value <= limits.max_side:
            raise ApiError(422, f"{name} = {value}; this server takes {multiple} .. {limits.max_side} pixels")
        if value % multiple:
            raise ApiError(422, f"{name} = {value} must be a multiple of {multiple} for this model")
    return request


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``where: what (got ...)`` per problem."""
    problems = []
    for problem in exc.errors()[:5]:
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        if problem["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key")
        elif problem["type"] == "missing":
            problems.append(f"{where}: required")
        else:
            shown = repr(problem.get("input"))
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            problems.append(f"{where}: {problem['msg']} (got {shown})")
    more = len(exc.errors()) - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
