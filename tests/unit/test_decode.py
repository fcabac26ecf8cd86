"""Probe images in every mode decode to RGB; broken files give a reason instead of a traceback."""

import io

import numpy as np
import pytest
from PIL import Image

from dnd.probe.decode import UnreadableImage, decode_rgb


def encode(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image, fmt",
    [
        (Image.new("L", (5, 4), 77), "PNG"),
        (Image.new("RGBA", (5, 4), (10, 20, 30, 255)), "PNG"),
        (Image.new("P", (5, 4), 3), "PNG"),
        (Image.new("CMYK", (5, 4), (0, 255, 255, 0)), "JPEG"),
        (Image.new("1", (5, 4), 1), "PNG"),
    ],
)
def test_modes_become_rgb(image, fmt):
    decoded = decode_rgb(encode(image, fmt))
    assert decoded.mode == "RGB" and decoded.size == (5, 4)


def test_transparent_pixels_become_white_not_black():
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    assert decode_rgb(encode(image)).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_images_are_rescaled_to_their_range():
    array = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    decoded = np.asarray(decode_rgb(encode(Image.fromarray(array))))
    assert decoded[..., 0].tolist() == [[0, 64], [128, 255]]


def test_truncated_image_is_named_as_such():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(UnreadableImage, match="truncated|not a readable"):
        decode_rgb(data[: len(data) // 2])


def test_not_an_image_and_empty():
    with pytest.raises(UnreadableImage, match="not a readable image"):
        decode_rgb(b"hello, I am a text file")
    with pytest.raises(UnreadableImage, match="empty"):
        decode_rgb(b"")
