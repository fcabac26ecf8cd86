"""Run configuration: YAML, overrides, neuron specs and the errors a user sees."""

import pytest

from dnd.config import config_reference, load_config, resolve_neurons
from dnd.errors import ConfigError

BASE = """
target: {model: "torchvision:resnet18", weights: none}
layers: [layer4, fc]
probe: {sources: [{uri: /data/probe}]}
"""


def test_paper_defaults():
    config = load_config(BASE)
    assert config.step1.top_k == 10
    assert config.step1.crops_per_image == 4
    assert config.step1.crop_iou == 0.5
    assert config.step1.whole_image_iou_cap == 0.8
    assert config.step1.summary == "mean"
    assert config.summarizer.candidates == 5
    assert config.generator.images_per_concept == 10
    assert config.generator.prompt_template == "One realistic image of {}"
    assert config.selection.beta == 5 and config.selection.top_t == 10
    assert config.selection.scoring == "topk_squared_image_products"
    assert config.selection.multilabel_similarity == 0.81


def test_set_overrides_parse_yaml_values_and_nested_keys():
    config = load_config(BASE, ["step1.top_k=3", "neurons=0:8", "captioner=null", "target.num_gpus=0.5"])
    assert config.step1.top_k == 3
    assert config.neurons == "0:8"
    assert config.captioner is None
    assert config.target.num_gpus == 0.5


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"step1\.top_K: unknown key"):
        load_config(BASE, ["step1.top_K=3"])


def test_bad_value_is_named_with_what_was_given():
    with pytest.raises(ConfigError, match=r"step1\.summary.*'median'"):
        load_config(BASE, ["step1.summary=median"])


def test_malformed_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("target: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/run.yaml")


def test_neuron_keys_must_be_layers():
    with pytest.raises(ConfigError, match="not in layers"):
        load_config(BASE, ["neurons={layer3: all}"])


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", list(range(6))),
        ("0:3", [0, 1, 2]),
        (":2", [0, 1]),
        ("4:", [4, 5]),
        ("0:2,5", [0, 1, 5]),
        ([5, "1:3", 1], [1, 2, 5]),
        (3, [3]),
    ],
)
def test_neuron_specs(spec, expected):
    assert resolve_neurons(spec, 6, "fc") == expected


@pytest.mark.parametrize("spec", [6, "0:7", [2, 9], "5:5"])
def test_out_of_range_neurons_give_the_layer_size(spec):
    with pytest.raises(ConfigError, match=r"layer 'fc' .*6 neurons"):
        resolve_neurons(spec, 6, "fc")


def test_garbage_neuron_spec():
    with pytest.raises(ConfigError, match="not understood"):
        resolve_neurons("first ten", 6, "fc")


def test_every_field_is_documented():
    reference = config_reference()
    for line in reference.splitlines()[2:]:
        assert not line.rstrip().endswith("|  |"), f"undocumented config key: {line}"
    assert "`step1.top_k`" in reference and "`probe.sources[].uri`" in reference


def test_methods_that_need_every_activation_keep_them():
    from dnd.config import load_config

    base = {"target": {"model": "torchvision:resnet18"}, "layers": ["fc"], "probe": {"sources": [{"uri": "gen://shapes"}]}}
    assert load_config({**base, "method": "clip-dissect"}).step1.keep_activations is True
    assert load_config({**base, "method": "clip-dissect"}).step1.crops is False
    assert load_config({**base, "candidates": {"clip_dissect_top": 3}}).step1.keep_activations is True
    assert load_config(base).step1.keep_activations is False
    with pytest.raises(ConfigError, match="method clip-dissect need every probe image's activations"):
        load_config({**base, "method": "clip-dissect", "step1": {"keep_activations": False}})
