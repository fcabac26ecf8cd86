"""The two LLM prompts of Step 2B and the chat messages built from them (paper, appendix A.1.3).

All prompt text of the engine lives in this module, and nowhere else: the LLM summarizer hashes
this file's text into its ``cache_key``, so editing a prompt or a few-shot example invalidates
every cached answer that was produced with the old wording.

Two calls are made:

1. *Simplify* one caption: BLIP captions carry extraneous details ("with a red door and a red
   door in the middle of the picture"), so each unique caption is first reduced to a short
   concept label.
2. *Summarize* one neuron's list of (simplified) captions into one candidate concept. The paper
   feeds GPT two worked examples (few-shot); they are sent here as earlier user/assistant turns,
   so the model sees exactly the request format it is about to answer, followed by the answer
   format we want (a bare label, no quotes, no period).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Prompt 1 of A.1.3, verbatim: turns one caption into a concept label.
SIMPLIFY_PROMPT = (
    "Only state your answer without a period and quotation marks. Do not number your answer. "
    "State one coherent and concise concept label that simplifies the following description "
    "and deletes any unnecessary details:"
)

#: Prompt 2 of A.1.3, verbatim: one candidate concept for a neuron's list of descriptions.
SUMMARIZE_PROMPT = (
    "Only state your answer without a period and quotation marks and do not simply repeat the "
    "descriptions. State one coherent and concise concept label that is 1-5 words long and can "
    "semantically summarize and represent most, not necessarily all, of the conceptual "
    "similarities in the following descriptions:"
)


@dataclass(frozen=True)
class FewShotExample:
    """A set of image captions and the similarity a human identified in them (A.1.3)."""

    similarity: str
    captions: tuple[str, ...]


#: The paper's two few-shot examples, captions verbatim (including BLIP's repetitions, which
#: show the model that noisy captions are expected and must be looked through).
FEW_SHOT_EXAMPLES: tuple[FewShotExample, ...] = (
    FewShotExample(
        similarity="multicolored textiles",
        captions=(
            "a purple background with a very soft texture",
            "a brown background with a diagonal pattern of lines and lines",
            "a white windmill with a red door and a red door in the middle of the picture",
            "a beige background with a rough texture of linen",
            "a beige background with a rough texture and a very soft texture",
        ),
    ),
    FewShotExample(
        similarity="red-themed scenes",
        captions=(
            "a little girl is sitting in a red tractor with the word sofy on the front",
            "a toy car sits on a red ottoman in a play room",
            "a red dress with silver studs and a silver belt",
            "a red chevrolet camaro is on display at a car show",
            "a red spool of a cable with the word red on it",
        ),
    ),
)

#: How each description is listed under the summarize prompt: a bullet with the caption in
#: quotes, the way the paper shows its examples. Quotes delimit captions that themselves contain
#: punctuation; the reply parser strips quotes should the model echo them.
DESCRIPTION_BULLET = '- "{}"'


def clean_caption(caption: str) -> str:
    """One caption on one line: a newline inside a caption would split it into two bullets."""
    return " ".join(str(caption).split())


def simplify_request(caption: str) -> str:
    """The user turn that asks for one caption's concept label."""
    return f"{SIMPLIFY_PROMPT}\n{clean_caption(caption)}"


def summarize_request(captions: list[str] | tuple[str, ...]) -> str:
    """The user turn that asks for one concept summarizing ``captions`` (in the given order)."""
    bullets = "\n".join(DESCRIPTION_BULLET.format(clean_caption(c)) for c in captions)
    return f"{SUMMARIZE_PROMPT}\n{bullets}"


def simplify_messages(caption: str) -> list[dict[str, str]]:
    """Chat ``messages`` for the simplify call: the paper gives this prompt no examples."""
    return [{"role": "user", "content": simplify_request(caption)}]


def summarize_messages(captions: list[str] | tuple[str, ...]) -> list[dict[str, str]]:
    """Chat ``messages`` for the summarize call: each few-shot example as a prior user turn with
    the human-identified similarity as the assistant's answer, then the real request."""
    messages: list[dict[str, str]] = []
    for example in FEW_SHOT_EXAMPLES:
        messages.append({"role": "user", "content": summarize_request(example.captions)})
        messages.append({"role": "assistant", "content": example.similarity})
    messages.append({"role": "user", "content": summarize_request(captions)})
    return messages
