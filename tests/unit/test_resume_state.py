"""Resume bookkeeping without Ray: Step 1 checkpoints, the same-config guard, OOM halving, cache parts."""

import numpy as np
import pytest

from dnd.activations.checkpoint import load_step1, save_step1, step1_digest
from dnd.activations.topk import StreamingTopK
from dnd.config import load_config
from dnd.errors import ConfigError, StorageError
from dnd.models.oom import halving_on_oom
from dnd.records import CropInfo, LayerPlan, ProbeImage, Step1Result
from dnd.store.cache import ContentCache
from dnd.store.layout import RunLayout
from dnd.store.runstate import claim, config_digest

BASE = {
    "target": {"model": "torchvision:resnet18", "weights": "random-tiny"},
    "layers": ["layer2"],
    "probe": {"sources": [{"uri": "gen://shapes?n=20&seed=0&size=32"}]},
}


def config(**changes):
    overrides = [f"{k}={v}" for k, v in changes.items()]
    return load_config(dict(BASE), overrides)


def step1_result():
    state = StreamingTopK(2, 3)
    state.update(np.array([[1.0, 2.0], [3.0, np.nan]], dtype=np.float32), np.array([7, 2**63 + 5], dtype=np.uint64))
    return Step1Result(
        layers=[LayerPlan("layer2", 8, [0, 3], True)],
        topk=[state],
        probe={7: ProbeImage("a" * 16, "gen://x/7", "gen"), 2**63 + 5: ProbeImage("b" * 16, "gen://x/5", "gen")},
        crops={11: CropInfo("c" * 16, "a" * 16, [0, 0, 4, 4], [[0, 3]])},
        crop_activations={(0, 1): [(11, 0.5)]},
        counts={"images_used": 2}, skipped={"duplicate image": ["x"]}, timings={"step1_activations_s": 1.0},
    )


def test_step1_checkpoint_round_trip(tmp_path):
    layout = RunLayout(str(tmp_path / "run"))
    digest = step1_digest(config())
    assert load_step1(layout, digest) is None
    original = step1_result()
    save_step1(layout, digest, original)
    loaded = load_step1(layout, digest)
    assert loaded.layers == original.layers
    np.testing.assert_array_equal(loaded.topk[0].values, original.topk[0].values)
    np.testing.assert_array_equal(loaded.topk[0].keys, original.topk[0].keys)
    np.testing.assert_array_equal(loaded.topk[0].nan_counts, [0, 1])
    assert loaded.probe == original.probe and loaded.crops == original.crops
    assert loaded.crop_activations == original.crop_activations
    assert loaded.winner_keys() == original.winner_keys() == {7, 2**63 + 5}
    assert loaded.counts == original.counts and loaded.skipped == original.skipped


def test_step1_digest_follows_what_changes_step1():
    assert step1_digest(config()) == step1_digest(config(**{"ray.num_cpus": 2, "target.batch_size": 7}))
    assert step1_digest(config()) != step1_digest(config(**{"step1.top_k": 3}))
    assert step1_digest(config()) != step1_digest(config(neurons="0:4"))
    # Step 2 settings do not touch Step 1's result, only the run's identity.
    changed = config(**{"summarizer.candidates": 2})
    assert step1_digest(config()) == step1_digest(changed)
    assert config_digest(config()) != config_digest(changed)


def test_same_config_resumes_other_config_is_refused_unless_overwrite(tmp_path):
    uri = str(tmp_path / "run")
    logs = []
    first = claim(RunLayout(uri), config(), overwrite=False, log=logs.append)
    assert first["mode"] == "fresh"
    layout = RunLayout(uri)
    layout.write_json({"x": 1}, "checkpoints", "marker.json")
    again = claim(RunLayout(uri), config(**{"ray.num_cpus": 1}), overwrite=False, log=logs.append)
    assert again["mode"] == "resume" and any("resuming" in m for m in logs)
    assert layout.read_json("checkpoints", "marker.json") == {"x": 1}

    other = config(**{"step1.top_k": 3})
    with pytest.raises(ConfigError, match=r"holds a run of another config.*--overwrite"):
        claim(RunLayout(uri), other, overwrite=False, log=logs.append)
    replaced = claim(RunLayout(uri), other, overwrite=True, log=logs.append)
    assert replaced["mode"] == "overwrite"
    assert layout.read_json("checkpoints", "marker.json") is None
    assert layout.read_json("_RUN")["config_digest"] == config_digest(other)


def test_results_without_a_run_record_are_not_silently_mixed(tmp_path):
    layout = RunLayout(str(tmp_path / "run"))
    layout.write_json({}, "neurons", "stray.json")
    with pytest.raises(ConfigError, match="cannot attribute"):
        claim(layout, config(), overwrite=False, log=lambda m: None)


def test_output_that_cannot_be_written_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match=r"output location .*file/run.* is not writable"):
        RunLayout(str(blocker / "run")).check_writable()


def test_out_of_memory_halves_the_batch_until_it_fits():
    sizes = []

    def model(batch):
        sizes.append(len(batch["x"]))
        if len(batch["x"]) > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"y": np.asarray(batch["x"]) * 2, "tag": [f"t{v}" for v in batch["x"]]}

    out = halving_on_oom(model, {"x": np.arange(10)})
    np.testing.assert_array_equal(out["y"], np.arange(10) * 2)
    assert out["tag"] == [f"t{v}" for v in range(10)]
    assert sizes[0] == 10 and max(sizes[1:]) == 5 and all(s <= 3 for s in sizes if s not in (10, 5))


def test_out_of_memory_on_one_row_and_other_errors_are_raised():
    def always(batch):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        halving_on_oom(always, {"x": np.arange(4)})
    calls = []

    def broken(batch):
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        halving_on_oom(broken, {"x": np.arange(4)})
    assert len(calls) == 1


def test_cache_parts_are_whole_files(tmp_path):
    import pyarrow as pa

    schema = pa.schema([pa.field("key", pa.string()), pa.field("v", pa.int64())])
    cache = ContentCache(str(tmp_path / "cache"), "t", schema)
    with cache.writer() as writer:
        for i in range(5):
            writer.add({"key": str(i), "v": i})
    files = sorted(p.name for p in (tmp_path / "cache" / "t").iterdir())
    assert len(files) == 1 and files[0].endswith(".parquet")
    assert set(cache.lookup(["1", "4", "9"])) == {"1", "4"}


def test_cli_resumes_by_default_and_overwrites_only_when_asked(capsys):
    from dnd.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["dissect", "run.yaml"]).overwrite is False
    assert parser.parse_args(["dissect", "run.yaml", "--resume"]).overwrite is False
    assert parser.parse_args(["dissect", "run.yaml", "--overwrite"]).overwrite is True
    with pytest.raises(SystemExit):
        parser.parse_args(["dissect", "run.yaml", "--resume", "--overwrite"])
    assert "not allowed with argument" in capsys.readouterr().err
