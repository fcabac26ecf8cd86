"""BatchNorm folding and channels-last change a target's speed, never what a recorded layer outputs."""

import pytest

torch = pytest.importorskip("torch")

from dnd.models.inference import conv_bn_pairs, fold_batchnorms, optimise_for_inference  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def _model(seed=0):
    torch.manual_seed(seed)
    model = Block()
    for bn in (model.bn1, model.bn2):  # non-trivial running statistics, as a trained network has
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _outputs(model, x, names):
    got = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda _m, _i, o, n=n: got.__setitem__(n, o.clone()))
             for n in names]
    try:
        with torch.inference_mode():
            got["out"] = model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


def test_pairs_found_by_tracing():
    assert conv_bn_pairs(_model()) == [("conv1", "bn1"), ("conv2", "bn2")]


def test_folding_keeps_outputs_and_replaces_batchnorms():
    x = torch.randn(4, 3, 16, 16)
    reference = _outputs(_model(), x, ["head"])
    model = _model()
    report = optimise_for_inference(model, ["head"])
    assert report == {"batchnorms_folded": 2, "channels_last": True}
    assert isinstance(model.bn1, torch.nn.Identity) and isinstance(model.bn2, torch.nn.Identity)
    got = _outputs(model, x, ["head"])
    torch.testing.assert_close(got["out"], reference["out"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["head"], reference["head"], rtol=1e-4, atol=1e-5)


def test_a_recorded_conv_keeps_its_pre_batchnorm_output():
    x = torch.randn(2, 3, 16, 16)
    reference = _outputs(_model(), x, ["conv2"])
    model = _model()
    assert fold_batchnorms(model, ["conv2"]) == 1  # only conv1/bn1
    assert isinstance(model.bn2, torch.nn.BatchNorm2d)
    torch.testing.assert_close(_outputs(model, x, ["conv2"])["conv2"], reference["conv2"], rtol=1e-4, atol=1e-5)


def test_training_mode_and_shared_convolutions_are_left_alone():
    model = _model().train()
    assert fold_batchnorms(model, []) == 0

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x)

    assert fold_batchnorms(Shared().eval(), []) == 0


def test_untraceable_models_run_as_loaded():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                return self.bn(self.conv(x))
            return x

    model = Branchy().eval()
    assert conv_bn_pairs(model) == []
    assert fold_batchnorms(model, []) == 0
    assert isinstance(model.bn, torch.nn.BatchNorm2d)


def test_networks_without_convolutions_keep_their_layout():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
    assert optimise_for_inference(mlp, []) == {"batchnorms_folded": 0, "channels_last": False}
