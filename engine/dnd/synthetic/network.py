"""The planted network: a small CNN whose neurons' concepts are known.

Layers the engine can dissect (``model.get_submodule(name)``):

- ``planted``  (N, 16, 24, 24): one channel per entry of ``truth.PLANTED_NEURONS``, each a
  probability map of "my concept is here", trained with dense per-pixel supervision so that its
  attention crops land on the objects that carry the concept.
- ``fc``       (N, 19): one presence logit per vocabulary term in ``truth.FC_CLASSES``.
- ``block1`` … ``block4``, ``head``: the unsupervised trunk and head (no ground truth).

Load it through the engine with ``python:dnd.synthetic.network:build``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dnd.errors import ConfigError
from dnd.synthetic.truth import FC_CLASSES, PLANTED_NEURONS
from dnd.synthetic.world import SIZE

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

#: The weights shipped with the package (trained by ``python -m dnd.synthetic.train``).
WEIGHTS_PATH = Path(__file__).with_name("planted_cnn.pt")

#: Input normalisation; the world's pixels are centred on mid-gray.
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class Preprocess:
    """PIL RGB image → float tensor (3, SIZE, SIZE), resized and normalised for the planted network.
    A class rather than a closure so Ray can pickle it."""

    def __init__(self, size: int = SIZE):
        self.size = size

    def __call__(self, image: "Image.Image") -> "torch.Tensor":
        import torch
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise ConfigError(f"the planted network's preprocess expects a PIL image, got {type(image).__name__}")
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(MEAN, dtype=np.float32)) / np.asarray(STD, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def __getattr__(name: str) -> Any:
    # The torch classes are built on first use (so importing this module stays cheap) and then
    # live at module level under their own names, so pickle finds them in a fresh process too.
    if name in ("PlantedCNN", "PlantedLayer"):
        _model_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _model_class() -> Any:
    """The PlantedCNN class, defined on first use so that importing this module does not import torch."""
    if "PlantedCNN" in globals():
        return globals()["PlantedCNN"]
    import torch
    from torch import nn

    def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    class PlantedLayer(nn.Module):
        """A 3×3 convolution read out through a sigmoid: each channel is the probability that its
        concept covers that location, so a neuron's spatial mean is roughly the area it sees."""

        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.conv(x))

    class _PlantedCNN(nn.Module):
        def __init__(self, n_planted: int = len(PLANTED_NEURONS), n_classes: int = len(FC_CLASSES)):
            super().__init__()
            self.block1 = nn.Sequential(*conv(3, 24))  # 96×96
            self.block2 = nn.Sequential(*conv(24, 48, stride=2))  # 48×48
            self.block3 = nn.Sequential(*conv(48, 64, stride=2))  # 24×24
            # Dilated convolutions widen the context to ~80 px without losing resolution, so a
            # pixel inside a large square can still tell that its object is a square.
            self.block4 = nn.Sequential(*conv(64, 64, dilation=2), *conv(64, 64, dilation=4))
            self.planted = PlantedLayer(64, n_planted)
            self.head = nn.Sequential(*conv(64 + n_planted, 64, stride=2), *conv(64, 64))  # 12×12
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, n_classes)
            self.class_names = list(FC_CLASSES)

        def trunk(self, x: torch.Tensor) -> torch.Tensor:
            return self.block4(self.block3(self.block2(self.block1(x))))

        def classify(self, features: torch.Tensor, planted: torch.Tensor) -> torch.Tensor:
            h = self.head(torch.cat([features, planted], dim=1))
            return self.fc(torch.flatten(self.pool(h), 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.trunk(x)
            return self.classify(features, self.planted(features))

        def training_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(fc logits, planted logits). The head reads the planted maps without sending its
            gradient back into them, so the planted channels keep exactly their planted meaning."""
            features = self.trunk(x)
            logits = self.planted.conv(features)
            return self.classify(features, torch.sigmoid(logits).detach()), logits

    for cls, name in ((PlantedLayer, "PlantedLayer"), (_PlantedCNN, "PlantedCNN")):
        cls.__name__ = cls.__qualname__ = name
        cls.__module__ = __name__
        globals()[name] = cls
    return _PlantedCNN


def new_model(seed: int = 0) -> Any:
    """A freshly initialised planted network (random weights from ``seed``)."""
    import torch

    torch.manual_seed(seed)
    return _model_class()()


def load_state(path: str | Path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"planted network weights {str(path)!r} do not exist; expected a state_dict file (train one with python -m dnd.synthetic.train)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"planted network weights {str(path)!r} cannot be loaded as a state_dict with weights_only=True: {exc}") from None


def build(weights: str | None = None) -> tuple[Any, Preprocess]:
    """(model in eval mode, preprocess). ``weights``: None, "default" or "shipped" for the weights
    shipped with the package; "random" for an untrained network; otherwise a state_dict path."""
    model = new_model()
    if weights is None or str(weights).lower() in ("default", "shipped"):
        path: str | Path | None = WEIGHTS_PATH
    elif str(weights).lower() in ("random", "none"):
        path = None
    else:
        path = weights
    if path is not None:
        state = load_state(path)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(f"planted network weights {str(path)!r} do not fit the planted network: {exc}") from None
    return model.eval(), Preprocess()
