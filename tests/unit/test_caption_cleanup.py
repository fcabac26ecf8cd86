"""clean_caption on captions as BLIP, BLIP-2 and chat models really write them."""

from __future__ import annotations

import pytest

from dnd.captioning.cleanup import clean_caption

CASES = [
    # BLIP's invented word, alone, after an article, and in its other spellings
    ("arafed man sitting on a bench", "man sitting on a bench"),
    ("there is a arafed dog laying on the grass", "a dog laying on the grass"),
    ("an araffe elephant standing in a field", "an elephant standing in a field"),
    ("an arafed man riding a bike", "a man riding a bike"),
    ("araffes walking across a dirt road", "walking across a dirt road"),
    ("a woman holding an araffe dog in her arms", "a woman holding a dog in her arms"),
    ("a man standing next to arrafed truck", "a man standing next to truck"),
    # framing phrases, also nested
    ("there is a dog that is sitting on the couch", "a dog that is sitting on the couch"),
    ("this is a picture of a red car", "a red car"),
    ("a picture of a cat sleeping on a bed", "a cat sleeping on a bed"),
    ("an image of a bird flying over the ocean", "a bird flying over the ocean"),
    ("there are two birds sitting on a wire", "two birds sitting on a wire"),
    ("There is a photo of a snowy mountain.", "a snowy mountain"),
    # framing words that are the content stay
    ("a man taking a picture of a dog", "a man taking a picture of a dog"),
    ("a painting of a house by a lake", "a painting of a house by a lake"),
    # repetition loops
    ("a red door and a red door", "a red door"),
    ("a close up of a close up of a flower", "a close up of a flower"),
    ("a bowl of soup with a bowl of soup with a bowl of soup", "a bowl of soup"),
    ("a man on a surfboard on a surfboard", "a man on a surfboard"),
    ("a dog dog running", "a dog running"),
    ("a black and white photo of a black and white photo of a train", "a black and white photo of a train"),
    ("a zebra, a zebra, a zebra", "a zebra"),
    # word repeats that mean something stay
    ("a black and black dog", "a black and black dog"),
    ("two dogs playing with two balls", "two dogs playing with two balls"),
    # special tokens, whitespace and punctuation
    ("[CLS] a cat on a mat [SEP]", "a cat on a mat"),
    ("a   dog [UNK]  on the   beach  ", "a dog on the beach"),
    ("</s> a plate of food on a table </s><pad><pad>", "a plate of food on a table"),
    ("A golden retriever lying on a wooden floor.", "A golden retriever lying on a wooden floor"),
    ("a sign that says \"stop\"...", 'a sign that says "stop"'),
    ("a truck, parked on the street!!", "a truck, parked on the street"),
    # nothing left
    ("", ""),
    ("   \n\t ", ""),
    ("[SEP] [PAD]", ""),
    ("there is", ""),
    ("arafed", ""),
]


@pytest.mark.parametrize("raw, expected", CASES)
def test_blip_outputs_are_cleaned(raw: str, expected: str) -> None:
    assert clean_caption(raw) == expected


@pytest.mark.parametrize(
    "raw, prompt, expected",
    [
        ("a picture of a dog on the beach", "a picture of", "a dog on the beach"),
        ("A photography of arafed woman in a hat", "a photography of", "woman in a hat"),
        ("a photography of   a tree", "a photography of", "a tree"),
        # the prompt is a prefix only; elsewhere it is content
        ("a dog next to a photography of a cat", "a photography of", "a dog next to a photography of a cat"),
        # a prompt that is a word prefix of the caption's first word is not stripped
        ("caterpillar on a leaf", "cat", "caterpillar on a leaf"),
    ],
)
def test_conditional_prompt_prefix_is_removed(raw: str, prompt: str, expected: str) -> None:
    assert clean_caption(raw, prompt=prompt) == expected


def test_none_is_empty() -> None:
    assert clean_caption(None) == ""


def test_cleaning_is_idempotent() -> None:
    for raw, _ in CASES:
        once = clean_caption(raw)
        assert clean_caption(once) == once


def test_method_paper_passes_captions_on_as_the_model_wrote_them() -> None:
    from dnd.captioning.cleanup import decoded_caption

    # Only what decoding leaves behind goes: special tokens, line breaks, an echoed prompt prefix.
    raw = "there is a picture of arafed man riding a horse [SEP]\n on a beach."
    assert decoded_caption(raw) == "there is a picture of arafed man riding a horse on a beach."
    assert decoded_caption("a photography of arafed woman", prompt="a photography of") == "arafed woman"
    assert clean_caption(raw) == "man riding a horse on a beach"
    assert decoded_caption(None) == "" and decoded_caption("  ") == ""


def test_captions_cached_with_and_without_cleanup_are_kept_apart() -> None:
    from dnd.captioning.stage import captioner_key
    from dnd.config import CaptionerConfig

    raw = CaptionerConfig(backend="hf", options={"model": "random-tiny"})
    clean = CaptionerConfig(backend="hf", options={"model": "random-tiny"}, cleanup=True)
    assert captioner_key(raw) != captioner_key(clean)
    assert captioner_key(raw) == captioner_key(CaptionerConfig(backend="hf", options={"model": "random-tiny"}))
