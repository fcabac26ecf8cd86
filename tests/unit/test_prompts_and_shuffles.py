"""The A.1.3 prompts and few-shot messages, and the seeded caption orders of Step 2B."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dnd
from dnd.concepts import prompts
from dnd.concepts.shuffles import summary_orders
from dnd.errors import ConfigError

# Retyped from appendix A.1.3 of the paper (line breaks of the PDF joined by single spaces).
PAPER_SIMPLIFY = (
    "Only state your answer without a period and quotation marks. Do not number your answer. State "
    "one coherent and concise concept label that simplifies the following description and deletes "
    "any unnecessary details:"
)
PAPER_SUMMARIZE = (
    "Only state your answer without a period and quotation marks and do not simply repeat the "
    "descriptions. State one coherent and concise concept label that is 1-5 words long and can "
    "semantically summarize and represent most, not necessarily all, of the conceptual similarities "
    "in the following descriptions:"
)


def test_prompts_are_the_papers_verbatim():
    assert prompts.SIMPLIFY_PROMPT == PAPER_SIMPLIFY
    assert prompts.SUMMARIZE_PROMPT == PAPER_SUMMARIZE


def test_few_shot_examples_are_the_papers():
    first, second = prompts.FEW_SHOT_EXAMPLES
    assert first.similarity == "multicolored textiles"
    assert second.similarity == "red-themed scenes"
    assert len(first.captions) == len(second.captions) == 5
    assert first.captions[2] == (
        "a white windmill with a red door and a red door in the middle of the picture"
    )
    assert second.captions[0] == (
        "a little girl is sitting in a red tractor with the word sofy on the front"
    )
    assert second.captions[4] == "a red spool of a cable with the word red on it"


def test_simplify_messages_are_one_user_turn_prompt_then_caption():
    messages = prompts.simplify_messages("a red dress\nwith  silver studs ")
    assert messages == [
        {"role": "user", "content": PAPER_SIMPLIFY + "\na red dress with silver studs"}
    ]


def test_summarize_messages_put_few_shot_examples_before_the_request():
    captions = ["red car", 'a "quoted" thing', "blue\ncar"]
    messages = prompts.summarize_messages(captions)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == "multicolored textiles"
    assert messages[3]["content"] == "red-themed scenes"
    assert messages[0]["content"] == PAPER_SUMMARIZE + "\n" + "\n".join(
        f'- "{c}"' for c in prompts.FEW_SHOT_EXAMPLES[0].captions
    )
    # The real request comes last, one bullet per caption in the given order, each on one line.
    assert messages[4]["content"] == (
        PAPER_SUMMARIZE + '\n- "red car"\n- "a "quoted" thing"\n- "blue car"'
    )


def _word_windows(text: str, width: int = 6) -> set[str]:
    words = re.findall(r"[a-z0-9-]+", text.lower())
    return {" ".join(words[i:i + width]) for i in range(len(words) - width + 1)}


def prompt_windows() -> set[str]:
    """Every run of six words of every prompt and few-shot text that prompts.py defines."""
    texts = [prompts.SIMPLIFY_PROMPT, prompts.SUMMARIZE_PROMPT]
    for example in prompts.FEW_SHOT_EXAMPLES:
        texts.extend(example.captions)
    return set().union(*(_word_windows(t) for t in texts))


def engine_string_literals(skip: Path):
    """(module path, string literal) for every string constant of every engine module but ``skip``.
    Docstrings are left out: they may quote a prompt to explain it, and are never sent."""
    package = Path(dnd.__file__).parent
    for path in sorted(package.rglob("*.py")):
        if path == skip:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        docstrings = {id(owner.body[0].value) for owner in ast.walk(tree)
                      if isinstance(owner, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and owner.body and isinstance(owner.body[0], ast.Expr)
                      and isinstance(owner.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                yield path, node.value


def test_no_prompt_text_outside_the_prompts_module():
    # The summarizer's cache key hashes prompts.py: prompt wording kept anywhere else in the engine
    # (another package too: a vision captioner, the Serve app) would escape that hash, and an edit
    # to it would reuse stale cached answers.
    windows = prompt_windows()
    assert len(windows) > 100  # both prompts and all ten few-shot captions are in the scan
    found = [(path.name, value[:60]) for path, value in engine_string_literals(Path(prompts.__file__))
             if _word_windows(value) & windows]
    assert found == []


def test_prompt_scan_finds_a_copied_prompt():
    # The scan above must be able to fail: a module quoting part of prompt 2 is caught.
    copied = "header = 'State one coherent and concise concept label that is 1-5 words long'"
    literals = [n.value for n in ast.walk(ast.parse(copied)) if isinstance(n, ast.Constant)]
    assert any(_word_windows(value) & prompt_windows() for value in literals)


CAPTIONS = [f"caption {i}" for i in range(10)]


def test_orders_are_deterministic_permutations_starting_with_the_given_order():
    orders = summary_orders(CAPTIONS, 5, seed=0, key="layer4/17")
    assert orders == summary_orders(CAPTIONS, 5, seed=0, key="layer4/17")
    assert len(orders) == 5
    assert orders[0] == CAPTIONS
    for order in orders:
        assert sorted(order) == sorted(CAPTIONS)
    assert len({tuple(o) for o in orders}) == 5


def test_keys_and_seeds_change_the_orders():
    base = summary_orders(CAPTIONS, 5, seed=0, key="layer4/17")
    other_key = summary_orders(CAPTIONS, 5, seed=0, key="layer4/18")
    other_seed = summary_orders(CAPTIONS, 5, seed=1, key="layer4/17")
    assert other_key[0] == other_seed[0] == CAPTIONS
    assert other_key[1:] != base[1:]
    assert other_seed[1:] != base[1:]


def test_orders_are_the_same_in_another_interpreter():
    # str hashing is salted per process; the orders must not depend on it.
    script = (
        "import json; from dnd.concepts.shuffles import summary_orders; "
        f"print(json.dumps(summary_orders({CAPTIONS!r}, 4, 7, 'conv1/3')))"
    )
    results = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout))
    assert results[0] == results[1] == summary_orders(CAPTIONS, 4, 7, "conv1/3")


def test_orders_are_distinct_while_distinct_ones_exist():
    orders = summary_orders(["a", "b", "c"], 6, seed=3, key="n")
    assert len({tuple(o) for o in orders}) == 6  # all 3! permutations
    # Fewer distinct orders than requested: still n orders, all valid.
    orders = summary_orders(["a", "b"], 4, seed=3, key="n")
    assert len(orders) == 4 and {tuple(o) for o in orders} == {("a", "b"), ("b", "a")}
    assert summary_orders(["only"], 3, seed=0, key="n") == [["only"]] * 3
    assert summary_orders([], 2, seed=0, key="n") == [[], []]


def test_duplicate_captions_and_input_not_mutated():
    captions = ["x", "x", "y"]
    orders = summary_orders(captions, 3, seed=0, key="n")
    assert captions == ["x", "x", "y"]
    assert all(sorted(o) == ["x", "x", "y"] for o in orders)


@pytest.mark.parametrize("n", [0, -1, 2.0, "5", True])
def test_bad_n_is_a_config_error(n):
    with pytest.raises(ConfigError, match="summaries per neuron"):
        summary_orders(CAPTIONS, n, seed=0, key="k")


def test_bad_seed_and_key_are_config_errors():
    with pytest.raises(ConfigError, match="seed"):
        summary_orders(CAPTIONS, 2, seed="0", key="k")
    with pytest.raises(ConfigError, match="key"):
        summary_orders(CAPTIONS, 2, seed=0, key=17)
