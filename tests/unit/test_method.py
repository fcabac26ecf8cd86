"""`method: paper` (the default) is the paper exactly; `method: dnd` adds dnd's changes, each still
switchable; a run records its method and every option that differs from that method's defaults."""

import argparse
from types import SimpleNamespace

import pytest

from dnd.config import METHOD_DEFAULTS, ConfigError, load_config

BASE = {"target": {"model": "torchvision:resnet18"}, "layers": ["layer4", "fc"],
        "probe": {"sources": [{"uri": "gen://shapes?n=8"}]}}


def test_paper_is_the_default_and_has_none_of_dnds_additions():
    config = load_config(BASE)
    assert config.method == "paper"
    assert config.step1.linear_crops == "none"  # no Grad-CAM crops for linear neurons
    assert config.step1.crop_scope == "neuron"  # the authors' code crops per neuron
    assert config.step1.min_crop_pixels == 1  # no minimum crop size
    assert config.selection.parsimony_share is None and config.selection.multilabel_share is None
    assert config.differs_from_method() == {}


def test_dnd_adds_its_changes_and_each_stays_switchable():
    config = load_config({**BASE, "method": "dnd"})
    assert (config.step1.linear_crops, config.step1.min_crop_pixels) == ("gradcam", 8)
    # Crops per neuron in both methods: letting a layer's crops compete for all its neurons was
    # measured worse on the planted world (README, "The paper, and beyond it").
    assert config.step1.crop_scope == "neuron"
    assert config.selection.parsimony_share == 0.5 and config.selection.multilabel_share == 0.5
    assert config.differs_from_method() == {}
    # One addition switched off, in the file or on the command line: the rest stay.
    tuned = load_config({**BASE, "method": "dnd", "selection": {"parsimony_share": None}}, ["step1.crop_scope=layer"])
    assert tuned.selection.parsimony_share is None and tuned.selection.multilabel_share == 0.5
    assert tuned.step1.linear_crops == "gradcam"
    assert tuned.differs_from_method() == {"selection.parsimony_share": None, "step1.crop_scope": "layer"}


def test_every_method_sets_the_same_options():
    assert METHOD_DEFAULTS["paper"].keys() == METHOD_DEFAULTS["dnd"].keys()
    for key, value in METHOD_DEFAULTS["paper"].items():
        assert value != METHOD_DEFAULTS["dnd"][key], key


def test_options_that_differ_are_listed_and_what_is_dissected_is_not():
    config = load_config({**BASE, "seed": 3, "neurons": {"fc": "0:4"}, "output": {"uri": "/tmp/x"},
                          "step1": {"top_k": 5}, "summarizer": {"backend": "extractive"}})
    assert config.differs_from_method() == {"seed": 3, "step1.top_k": 5, "summarizer.backend": "extractive"}
    assert load_config({**BASE, "captioner": None}).differs_from_method() == {"captioner": None}


def test_a_method_override_on_a_built_config_carries_that_methods_defaults():
    dnd = load_config({**BASE, "method": "dnd"})
    paper = load_config(dnd, ["method=paper"])
    assert paper.step1.crop_scope == "neuron" and paper.selection.parsimony_share is None
    assert paper.differs_from_method() == {}
    kept = load_config(load_config({**BASE, "method": "dnd", "step1": {"top_k": 4}}), ["method=paper"])
    assert kept.step1.top_k == 4  # what the config set itself stays


def test_an_unknown_method_is_named():
    with pytest.raises(ConfigError, match=r"method: Input should be 'paper', 'dnd' or 'clip-dissect' \(got 'papr'\)"):
        load_config({**BASE, "method": "papr"})


def test_report_header_says_the_method_and_what_differs():
    from dnd.report.build import method_line

    assert method_line({"method": {"name": "paper", "differs": {}}}) == "method: paper (its defaults)"
    assert method_line({"method": {"name": "dnd", "differs": {"seed": 3, "selection.parsimony_share": None}}}) == (
        "method: dnd; options that differ from its defaults: seed=3, selection.parsimony_share=null")
    assert "not recorded" in method_line({})


def test_demo_runs_its_method_and_prints_the_other_beside_it(monkeypatch, capsys):
    import dnd.synthetic.demo as demo
    from dnd import cli

    ran = []

    def fake_run_demo(out, probe_images, overwrite, method):
        ran.append((out, method))
        accuracy = {"dnd": 0.95, "paper": 0.5}[method]
        summary = {"accuracy": {"fc": accuracy}, "neurons": {"fc": 16}, "accuracy_by_kind": {"colour": accuracy},
                   "polysemantic_both_named": accuracy, "misses": []}
        manifest = {"counts": {"status": {"ok": 16}}, "timings_s": {"total_s": 1.0}}
        return SimpleNamespace(uri=out, manifest=manifest), summary

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    args = argparse.Namespace(out="dnd-demo", images=600, overwrite=False, method="dnd", print_config=False)
    assert cli._cmd_demo(args) == 0
    assert ran == [("dnd-demo", "dnd"), ("dnd-demo-paper", "paper")]
    printed = capsys.readouterr().out
    assert "method: dnd; beside it, method paper at dnd-demo-paper" in printed
    assert "recovered fc: 95% of 16 neurons named their planted concept   (paper: 50%)" in printed
    assert "polysemantic neurons with both concepts among their labels: 95%   (paper: 50%)" in printed
