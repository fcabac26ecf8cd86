"""Shared pieces of the ``random-tiny`` backends: the real model classes at toy size, random weights,
built in memory so smoke runs and tests need no files and no network.

Every Ray actor builds its own copy, so construction is seeded: two processes that build the same
random-tiny model get identical weights, and therefore identical captions, images and embeddings.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from transformers import BertTokenizer, CLIPTokenizer

#: The ``model`` value that selects the toy-size, random-weight build of a backend.
RANDOM_TINY = "random-tiny"

#: Seed for random-tiny weights; fixed so every actor and every rerun builds the same model.
TINY_SEED = 0

#: Plain English words forming the tiny tokenizers' vocabularies, so that a random caption still
#: decodes to readable words and a concept phrase still tokenizes to whole words.
TINY_WORDS: tuple[str, ...] = tuple(
    """
    a an the one two three some many of and or with on in at by near under over above below behind
    beside between into from to for up down out off next front back top bottom left right inside
    is are was being has have there this that it its his her their
    red orange yellow green blue purple pink brown black white gray grey gold silver dark light
    bright pale striped spotted checkered wooden metal glass plastic stone paper furry shiny
    big small large tiny tall short long round square flat old new young wet dry empty full open
    closed soft hard hot cold clean dirty
    man woman person people boy girl child baby player crowd face hand hands eye eyes hair head
    arm leg foot body smile
    dog dogs cat cats bird birds fish horse cow sheep pig duck chicken bear lion tiger elephant
    zebra giraffe monkey rabbit mouse snake frog turtle shark whale dolphin insect bee butterfly
    spider puppy kitten animal animals
    car cars truck bus train plane boat ship bike bicycle motorcycle wheel wheels road street
    bridge tunnel track
    house building tower church castle wall walls door doors window windows roof floor stairs
    fence gate room kitchen bedroom bathroom office shop store market city town village
    tree trees flower flowers grass leaf leaves plant plants forest garden field farm park bush
    sky cloud clouds sun moon star stars rain snow ice fire smoke water sea ocean lake river beach
    sand rock rocks mountain mountains hill hills desert island wave waves
    table chair chairs bed couch sofa lamp clock shelf book books bag box bottle cup plate bowl
    food bread cake pizza fruit apple apples banana orange vegetables
    ball toy toys kite umbrella hat shirt dress shoes coat glasses phone computer screen keyboard
    television camera sign signs letters text number pattern texture lines line circle circles
    dots grid stripes shape shapes
    picture image photo photograph painting drawing view close background foreground scene realistic
    standing sitting lying walking running flying swimming eating playing holding riding
    looking wearing carrying jumping sleeping
    day night morning evening summer winter
    """.split()
)

_BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: BLIP's text decoder starts every caption with this token (its ``bos_token_id``).
BLIP_DECODER_START = "[DEC]"

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
#: Characters the tiny CLIP tokenizer knows on their own, so that any ASCII phrase tokenizes
#: without hitting the unknown token (which CLIP aliases to end-of-text, the pooling position).
_CLIP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()/&"


@contextlib.contextmanager
def tiny_weights_seeded() -> Iterator[None]:
    """Seed torch while a random-tiny model is built, leaving the caller's RNG state untouched."""
    import torch

    # Only the CPU generator is forked and seeded: random-tiny models are built on the CPU and moved
    # afterwards, so their weights do not depend on which device the actor was given.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        yield


def tiny_bert_vocab() -> dict[str, int]:
    """WordPiece vocabulary: BERT's special tokens, every tiny word, then BLIP's decoder start."""
    vocab: dict[str, int] = {}
    for token in (*_BERT_SPECIAL, *TINY_WORDS, BLIP_DECODER_START):
        vocab.setdefault(token, len(vocab))
    return vocab


def tiny_bert_tokenizer() -> "BertTokenizer":
    """A BERT tokenizer (the class BLIP uses) over :data:`TINY_WORDS`, with ``[DEC]`` as its bos."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab=tiny_bert_vocab(), model_max_length=64)
    tokenizer.add_special_tokens({"bos_token": BLIP_DECODER_START})
    return tokenizer


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # CLIP's BPE marks the last piece of a word with "</w>". Each tiny word gets a chain of merges
    # built left to right, so it tokenizes to a single token; other words fall back to characters.
    vocab: dict[str, int] = {}
    for token in (_CLIP_BOS, _CLIP_EOS, *_CLIP_CHARS, *(c + "</w>" for c in _CLIP_CHARS)):
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in TINY_WORDS:
        piece = word[0]
        for position in range(1, len(word)):
            right = word[position] + ("</w>" if position == len(word) - 1 else "")
            if (piece, right) not in seen:
                seen.add((piece, right))
                merges.append((piece, right))
            piece += right
            vocab.setdefault(piece, len(vocab))
    return vocab, merges


def tiny_clip_tokenizer(model_max_length: int = 77) -> "CLIPTokenizer":
    """A CLIP BPE tokenizer whose vocabulary is :data:`TINY_WORDS` plus single characters."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def is_random_tiny(model: str) -> bool:
    return model == RANDOM_TINY
