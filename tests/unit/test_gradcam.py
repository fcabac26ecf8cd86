"""Grad-CAM maps for linear-layer neurons: the map layer is found by forward order, and a class
whose weight reads one channel gets a map where that channel fires."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dnd.cropping.attention import attention_boxes
from dnd.cropping.gradcam import find_map_layer, gradcam_maps
from dnd.errors import ConfigError


class TwoChannelNet(nn.Module):
    """Identity "conv" features (2 channels of 8×8) → global average pool → fc with set weights."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            # class 0 reads channel 0, class 1 channel 1, class 2 is channel 0 minus channel 1
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def two_blobs(batch: int = 2) -> torch.Tensor:
    x = torch.zeros(batch, 2, 8, 8)
    x[:, 0, 0:3, 0:3] = 1.0  # channel 0 fires top-left
    x[:, 1, 5:8, 4:8] = 2.0  # channel 1 fires bottom-right
    return x


def test_the_map_layer_is_the_last_spatial_output_before_the_linear_layer():
    net = TwoChannelNet().eval()
    x = two_blobs(1)
    # "pool" is 1×1, so the Sequential of the features is the last spatial output before fc.
    assert find_map_layer(net, "fc", lambda: net(x)) == "features"
    from torchvision.models import resnet18

    resnet = resnet18(weights=None).eval()
    assert find_map_layer(resnet, "fc", lambda: resnet(torch.zeros(1, 3, 64, 64))) == "layer4"


def test_a_layer_with_nothing_spatial_before_it_is_a_clear_error():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(ConfigError, match="no spatial layer before it"):
        find_map_layer(net, "1", lambda: net(torch.zeros(1, 1, 2, 2)))


def test_gradcam_maps_follow_the_weights_of_each_class():
    net = TwoChannelNet().eval()
    x = two_blobs(2)
    maps = gradcam_maps(net, net, x, "features", "fc", [(0, 0), (0, 1), (1, 2), (1, 0)])
    assert set(maps) == {(0, 0), (0, 1), (1, 2), (1, 0)}
    # Through a 8×8 average pool each weight reaches A_c as w/64; the map is ReLU(Σ_c w_c/64 · A_c).
    expected0 = np.zeros((8, 8), dtype=np.float32)
    expected0[0:3, 0:3] = 1.0 / 64
    np.testing.assert_allclose(maps[(0, 0)], expected0, atol=1e-7)
    np.testing.assert_allclose(maps[(1, 0)], expected0, atol=1e-7)
    expected1 = np.zeros((8, 8), dtype=np.float32)
    expected1[5:8, 4:8] = 2.0 / 64
    np.testing.assert_allclose(maps[(0, 1)], expected1, atol=1e-7)
    # class 2 = channel 0 - channel 1: the ReLU keeps only the top-left blob.
    np.testing.assert_allclose(maps[(1, 2)], expected0, atol=1e-7)
    # And the ordinary Otsu cropping turns a map into a box around its blob: on a 64-px image each map
    # cell is 8 px, so columns 4-7 and rows 5-7 are the box (x0, y0, x1, y1) = (32, 40, 64, 64).
    boxes = attention_boxes(maps[(0, 1)], (64, 64), max_crops=4)
    assert boxes == [(32, 40, 64, 64)]
