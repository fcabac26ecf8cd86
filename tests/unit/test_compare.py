"""dnd compare without Ray: naming the methods, the run each one gets, the shared Step 1's guard,
and the per-layer table."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from dnd.activations.checkpoint import step1_digest
from dnd.config import load_config
from dnd.errors import ConfigError
from dnd.methods.compare import layer_tables, parse_variants, seconds_after_step1, variant_configs
from dnd.store.layout import RunLayout, open_layout

BASE = """
method: dnd
target: {model: "torchvision:resnet18", weights: none}
layers: [layer4, fc]
probe: {sources: [{uri: /data/probe}]}
selection: {embedder: {backend: synthetic}}
"""


def test_methods_and_named_variants_with_their_own_options():
    variants = parse_variants("paper, dnd,clip-dissect,hybrid=dnd", ["hybrid:candidates.clip_dissect_top=5"])
    assert [(v.name, v.method, v.overrides) for v in variants] == [
        ("paper", "paper", []), ("dnd", "dnd", []), ("clip-dissect", "clip-dissect", []),
        ("hybrid", "dnd", ["candidates.clip_dissect_top=5"]),
    ]


@pytest.mark.parametrize("methods, options, message", [
    ("paper,netdissect", [], r"method 'netdissect' \(in --methods 'netdissect'\) is not one of paper, dnd, clip-dissect"),
    ("paper,paper", [], r"method 'paper' is listed twice"),
    ("", [], r"--methods names no method"),
    ("a/b=dnd", [], r"method name 'a/b' must be letters"),
    ("dnd", ["hybrid:seed=3"], r"names 'hybrid', which is not in --methods \(dnd\)"),
    ("dnd", ["dnd:step1.top_k=3"], r"sets step1, which every compared method shares"),
    ("dnd", ["dnd:seed"], r"is not NAME:KEY=VALUE"),
])
def test_bad_method_lists_are_named(methods, options, message):
    with pytest.raises(ConfigError, match=message):
        parse_variants(methods, options)


def test_every_method_runs_on_the_same_step1_with_its_own_options(tmp_path):
    base = load_config(BASE)
    variants = parse_variants("paper,dnd,clip-dissect,hybrid=dnd", ["hybrid:candidates.clip_dissect_top=5"])
    configs = variant_configs(base, variants, str(tmp_path), concepts=None, own_caches=False)
    # One Step 1 digest for all: the checkpoint the first method writes is the one the others load.
    assert len({step1_digest(c) for c in configs.values()}) == 1
    assert all(c.step1.keep_activations for c in configs.values())
    assert configs["paper"].method == "paper" and configs["paper"].captioner.cleanup is False  # the paper's own option
    assert configs["paper"].step1.linear_crops == "gradcam"  # the config's (dnd's) Step 1, shared
    assert configs["paper"].differs_from_method()["step1.linear_crops"] == "gradcam"
    assert configs["hybrid"].candidates.clip_dissect_top == 5 and configs["dnd"].candidates.clip_dissect_top == 0
    for name, config in configs.items():
        assert config.output.uri == f"{tmp_path}/{name}"
        assert config.output.step1_uri == f"{tmp_path}/step1" and config.output.cache_uri == f"{tmp_path}/cache"
        # No faithfulness section and an embedder: every method is scored against the embedder's concepts.
        assert config.faithfulness.concepts == "clip"
    own = variant_configs(base, variants[:2], str(tmp_path), concepts="planted", own_caches=True)
    assert own["dnd"].output.cache_uri == f"{tmp_path}/cache-dnd" and own["dnd"].faithfulness.concepts == "planted"


def test_a_clip_dissect_config_cuts_crops_when_a_captioning_method_is_compared(tmp_path):
    base = load_config(BASE, ["method=clip-dissect"])
    assert base.step1.crops is False
    both = variant_configs(base, parse_variants("clip-dissect,paper"), str(tmp_path), None, False)
    assert both["paper"].step1.crops is True and both["clip-dissect"].step1.crops is True
    alone = variant_configs(base, parse_variants("clip-dissect"), str(tmp_path), None, False)
    assert alone["clip-dissect"].step1.crops is False


def test_a_shared_step1_of_other_settings_is_refused(tmp_path):
    from dnd.pipeline import claim_shared_step1

    step1 = RunLayout(str(tmp_path / "step1"))
    claim_shared_step1(step1, "aaaa")
    claim_shared_step1(step1, "aaaa")  # the same Step 1 again: shared
    with pytest.raises(ConfigError, match=r"holds the Step 1 of another .* \(digest aaaa, this run's is bbbb\)"):
        claim_shared_step1(step1, "bbbb")


def test_a_run_that_shares_a_step1_reads_its_images_there(tmp_path):
    run = RunLayout(str(tmp_path / "dnd"), step1_uri=str(tmp_path / "step1"))
    assert run.shares_step1 and run.step1.uri == str(tmp_path / "step1")
    assert not RunLayout(str(tmp_path / "own")).shares_step1
    run.write_json({"config": {"output": {"step1_uri": str(tmp_path / "step1"), "cache_uri": None}}}, "_SUCCESS")
    opened, manifest = open_layout(str(tmp_path / "dnd"))
    assert opened.step1.uri == str(tmp_path / "step1") and opened.cache == str(tmp_path / "dnd" / "cache")
    assert manifest["config"]["output"]["step1_uri"] == str(tmp_path / "step1")


class _Run:
    def __init__(self, rows):
        self.neurons = pd.DataFrame(rows)


def test_the_table_has_every_neuron_and_a_missing_row_reads_null():
    def row(layer, neuron, label, corr):
        return {"layer": layer, "neuron": neuron, "status": "ok", "label": label,
                "faithfulness": {"correlation": corr, "auprc": 0.5}}

    runs = {"paper": _Run([row("fc", 1, "red circle", 0.4), row("fc", 0, "blue", None), row("l4", 2, "dog", 0.1)]),
            "clip-dissect": _Run([row("fc", 0, "blue", 0.9), row("l4", 2, "cat", 0.2)])}
    tables = layer_tables(runs)
    fc = tables["fc"].to_pylist()
    assert [r["neuron"] for r in fc] == [0, 1]
    assert fc[0]["paper.label"] == "blue" and fc[0]["paper.correlation"] is None and fc[0]["clip-dissect.correlation"] == 0.9
    assert fc[1]["paper.label"] == "red circle" and fc[1]["clip-dissect.label"] is None
    assert fc[1]["clip-dissect.status"] is None
    assert tables["l4"].to_pylist()[0]["clip-dissect.label"] == "cat"


def test_seconds_after_step1_leave_out_step1_and_scoring():
    manifest = {"timings_s": {"step1_activations_s": 50.0, "step1_crops_s": 20.0, "step2a_captions_s": 3.0,
                              "step3_selection_s": 4.5, "faithfulness_s": 9.0, "total_s": 90.0}}
    assert seconds_after_step1(manifest) == 7.5


def test_the_command_names_a_bad_method_in_one_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(BASE)
    done = subprocess.run([sys.executable, "-m", "dnd.cli", "compare", str(config), "--methods", "paper,lime",
                           "--out", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dnd: error: method 'lime' (in --methods 'lime') is not one of paper, dnd, clip-dissect"]
    assert not (tmp_path / "cmp").exists()  # refused before anything was written


def test_show_on_a_comparison_names_its_runs(tmp_path):
    RunLayout(str(tmp_path)).write_json({"runs": {"paper": f"{tmp_path}/paper", "dnd": f"{tmp_path}/dnd"}}, "_COMPARE")
    done = subprocess.run([sys.executable, "-m", "dnd.cli", "show", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"dnd: error: {str(tmp_path)!r} holds a comparison of several runs (dnd compare); "
                                   f"show one of them: {tmp_path}/paper, {tmp_path}/dnd")
