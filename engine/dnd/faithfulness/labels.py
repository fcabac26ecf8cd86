"""Concept source ``labels``: a labelled probing set.

``labels:PATH`` is either a CSV of ``image,label[,label…]`` rows (an optional header row starts with
``image``), where ``image`` is a probe image's reference or its file name; or the root of an
ImageFolder tree, where an image's label is the name of the folder under the root that holds it.

An explanation is present in an image when it matches one of the image's labels: exactly after
:func:`dnd.faithfulness.sources.normalise`, or, with ``similarity`` set, when the run's embedder
puts the two texts at a cosine similarity of at least ``similarity``.
"""

from __future__ import annotations

import csv
import io
import posixpath
import numpy as np

from dnd.errors import ConfigError
from dnd.faithfulness.sources import CONCEPT_SOURCES, ConceptVectors, ProbeImages, ScoringContext, needs_embedder, normalise

def _strip_scheme(ref: str) -> str:
    return ref.split("://", 1)[1] if ref.startswith("file://") else ref


@CONCEPT_SOURCES.register("labels")
class LabelSource:
    def __init__(self, path: str, similarity: float | None = None, storage_options: dict | None = None):
        if similarity is not None and not 0 < similarity <= 1:
            raise ConfigError(f"labels option similarity must lie in (0, 1], got {similarity!r}")
        self.path, self.similarity, self.storage_options = path, similarity, storage_options or {}

    def check(self, config) -> None:
        from dnd.store.fs import url_to_fs

        fs, root = url_to_fs(self.path, self.storage_options)
        if not fs.exists(root):
            raise ConfigError(f"labels path {self.path!r} does not exist; expected a CSV file or an ImageFolder root")
        if self.similarity is not None:
            needs_embedder(config, "labels with similarity")

    def image_labels(self, images: ProbeImages) -> list[set[str]]:
        """Each probe image's normalised labels (empty where the source has none)."""
        from dnd.store.fs import url_to_fs

        fs, root = url_to_fs(self.path, self.storage_options)
        if not fs.exists(root):
            raise ConfigError(f"labels path {self.path!r} does not exist; expected a CSV file or an ImageFolder root")
        if fs.isdir(root):
            return self._from_folders(root.rstrip("/"), images)
        with fs.open(root, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
        return self._from_csv(text, images)

    def _from_folders(self, root: str, images: ProbeImages) -> list[set[str]]:
        out = []
        for ref in images.refs:
            path = _strip_scheme(ref)
            if not path.startswith(root + "/"):
                out.append(set())
                continue
            relative = path[len(root) + 1 :]
            folder, _, rest = relative.partition("/")
            out.append({normalise(folder)} if rest else set())
        return out

    def _from_csv(self, text: str, images: ProbeImages) -> list[set[str]]:
        by_ref: dict[str, set[str]] = {}
        for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            cells = [cell.strip() for cell in row]
            if not cells or not cells[0]:
                continue
            if number == 1 and cells[0].lower() == "image":
                continue
            if len(cells) < 2 or not any(cells[1:]):
                raise ConfigError(f"labels file {self.path!r} line {number}: expected image,label[,label…], got {row!r}")
            by_ref.setdefault(cells[0], set()).update(normalise(c) for c in cells[1:] if c)
        by_name: dict[str, set[str] | None] = {}
        for ref, labels in by_ref.items():
            name = posixpath.basename(ref)
            by_name[name] = None if name in by_name else labels  # a name listed twice is ambiguous
        out = []
        for ref in images.refs:
            labels = by_ref.get(ref) or by_ref.get(_strip_scheme(ref))
            if labels is None:
                labels = by_name.get(posixpath.basename(_strip_scheme(ref))) or set()
            out.append(labels)
        return out

    def vectors(self, explanations: list[str], images: ProbeImages, context: ScoringContext) -> ConceptVectors:
        labels = self.image_labels(images)
        labelled = sum(1 for found in labels if found)
        if labelled == 0:
            raise ConfigError(f"labels {self.path!r} label none of the run's {len(images.refs)} probe images; "
                              f"check that it lists their file names (first probe image: {images.refs[0]!r})")
        vocabulary = sorted(set().union(*labels))
        index = {name: j for j, name in enumerate(vocabulary)}
        has = np.zeros((len(vocabulary), len(labels)), dtype=bool)  # label j in image i
        for i, found in enumerate(labels):
            for name in found:
                has[index[name], i] = True
        matches = self._matches(explanations, vocabulary, context)
        present = (matches.astype(np.float32) @ has.astype(np.float32)) > 0
        return ConceptVectors(present.astype(np.float32), present, notes={
            "labelled_images": labelled, "label_vocabulary": len(vocabulary),
            "explanations_matching_a_label": int(matches.any(axis=1).sum()),
        })

    def _matches(self, explanations: list[str], vocabulary: list[str], context: ScoringContext) -> np.ndarray:
        """(explanations, labels) bool: which labels each explanation stands for."""
        exact = np.array([[normalise(e) == name for name in vocabulary] for e in explanations], dtype=bool)
        if self.similarity is None:
            return exact.reshape(len(explanations), len(vocabulary))
        from dnd.faithfulness.embedding import embed_texts

        texts = embed_texts(context, [normalise(e) for e in explanations] + vocabulary)
        similarity = texts[: len(explanations)] @ texts[len(explanations) :].T
        return exact | (similarity >= self.similarity)
