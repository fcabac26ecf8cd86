"""BERTScore F1 (Zhang et al., 2020), the third metric of section 4.2.1.

Each text becomes the contextual embeddings of its tokens (one hidden layer of a Hugging Face
encoder, special tokens left out). Every candidate token is matched greedily to its most similar
reference token (precision), every reference token to its most similar candidate token (recall),
and F1 = 2PR / (P + R). Idf weighting is off and scores are not rescaled, as in BERTScore's defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dnd.errors import ConfigError
from dnd.tiny import is_random_tiny, tiny_bert_tokenizer, tiny_weights_seeded

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

DEFAULT_MODEL = "roberta-large"
#: The hidden layer BERTScore's authors chose per model (their tuned defaults); other models use the last.
DEFAULT_LAYERS = {"roberta-large": 17, "roberta-base": 10, "bert-base-uncased": 9, "microsoft/deberta-xlarge-mnli": 40}


class BERTScorer:
    """Token embeddings of ``model`` (id, local path, or ``random-tiny``) at hidden layer ``layer``."""

    def __init__(self, model: str = DEFAULT_MODEL, layer: int | None = None, device: str = "cpu", batch_size: int = 64):
        self.model_name = model
        if is_random_tiny(model):
            self.tokenizer, self.model = build_tiny_roberta()
        else:
            from transformers import AutoModel, AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(model)
                self.model = AutoModel.from_pretrained(model)
            except OSError as exc:
                raise ConfigError(
                    f"cannot load the BERTScore model {model!r}: {str(exc).rstrip('.')}. Expected a Hugging "
                    f"Face id in the local cache (or reachable online) or a local directory, e.g. {DEFAULT_MODEL!r}."
                ) from None
        self.model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        layers = int(self.model.config.num_hidden_layers)
        chosen = DEFAULT_LAYERS.get(model, layers) if layer is None else int(layer)
        if not 1 <= chosen <= layers:
            raise ConfigError(f"BERTScore layer must be between 1 and {layers} for {model!r}, got {layer!r}")
        self.layer = chosen

    def token_embeddings(self, texts: list[str]) -> "list[np.ndarray]":
        """Per text, its (tokens, dim) unit-length contextual embeddings, special tokens dropped."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                encoded = self.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt",
                                         return_special_tokens_mask=True)
                special = encoded.pop("special_tokens_mask").bool()
                inputs = {k: v.to(self.device) for k, v in encoded.items()}
                hidden = self.model(**inputs, output_hidden_states=True).hidden_states[self.layer].float().cpu()
                keep = encoded["attention_mask"].bool() & ~special
                for row, mask in zip(hidden, keep):
                    tokens = row[mask]
                    tokens = tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                    out.append(tokens.numpy())
        return out

    def f1(self, candidates: list[str], references: list[str]) -> "np.ndarray":
        """BERTScore F1 of each (candidate, reference) pair; a text with no tokens scores 0."""
        import numpy as np

        if len(candidates) != len(references):
            raise ConfigError(f"BERTScore needs as many candidates as references, got {len(candidates)} and {len(references)}")
        unique = sorted(set(candidates) | set(references))
        embedded = dict(zip(unique, self.token_embeddings(unique)))
        scores = np.zeros(len(candidates), dtype=np.float64)
        for i, (cand, ref) in enumerate(zip(candidates, references)):
            scores[i] = greedy_f1(embedded[cand], embedded[ref])
        return scores


def greedy_f1(candidate: "np.ndarray", reference: "np.ndarray") -> float:
    """F1 of greedy cosine matching between two sets of unit token vectors."""
    if len(candidate) == 0 or len(reference) == 0:
        return 0.0
    similarity = candidate @ reference.T
    precision = float(similarity.max(axis=1).mean())
    recall = float(similarity.max(axis=0).mean())
    if precision + recall <= 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def build_tiny_roberta() -> tuple[Any, Any]:
    """The real RoBERTa class at toy size (2 layers, 32-d) with the tiny word vocabulary."""
    from transformers import RobertaConfig, RobertaModel

    tokenizer = tiny_bert_tokenizer()
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length + 4,
        pad_token_id=tokenizer.pad_token_id, type_vocab_size=1,
    )
    with tiny_weights_seeded():
        model = RobertaModel(config)
    return tokenizer, model
