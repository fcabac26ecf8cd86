"""Bad input fails fast with a message that names the bad value, never a traceback; plus the
`dnd layers` and `dnd show` commands on real models and a real run.

Most checks here fail before any Ray work: ``no_ray`` makes starting Ray an error, so a check that
got past validation fails loudly instead of quietly starting a cluster.
"""

import io
import os
import re
import socket
import subprocess
import sys

import pytest
from PIL import Image

from dnd.errors import ConfigError, DndError, StorageError


def png(colour, size=(40, 32)) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, colour)
    image.paste((255 - colour[0], colour[2], colour[1]), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    for i, colour in enumerate([(200, 30, 30), (20, 180, 40), (30, 40, 220), (240, 240, 20)]):
        (folder / f"{i}.png").write_bytes(png(colour))
    return str(folder)


def config(probe_uri, tmp_path, **changes):
    data = {
        "target": {"model": "torchvision:resnet18", "weights": "random-tiny"},
        "layers": ["layer2", "fc"],
        "neurons": {"layer2": "0:4", "fc": [0, 1]},
        "probe": {"sources": [{"uri": probe_uri}]},
        "step1": {"top_k": 2, "crops": False},
        "captioner": None,
        "output": {"uri": str(tmp_path / "run")},
    }
    for key, value in changes.items():
        data[key] = value
    return data


@pytest.fixture
def no_ray(monkeypatch):
    import dnd.pipeline

    def refuse(_config):
        raise AssertionError("bad input reached Ray start-up instead of failing during validation")

    monkeypatch.setattr(dnd.pipeline, "init_ray", refuse)


def dissect(data):
    from dnd.pipeline import dissect as run

    return run(data, log=lambda m: None)


def cli(*args, cwd=None, env_extra=None):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "dnd.cli", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


# ------------------------------------------------------------------------------------------------
# The target model, its layers and neurons


def test_unknown_torchvision_model_is_named(no_ray, good_folder, tmp_path):
    data = config(good_folder, tmp_path, target={"model": "torchvision:resnet9000", "weights": "random-tiny"})
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'resnet9000'") as info:
        dissect(data)
    assert "resnet18" in str(info.value)  # the similar names it offers include the real ones


def test_unknown_model_family_lists_the_families(no_ray, good_folder, tmp_path):
    data = config(good_folder, tmp_path, target={"model": "foo:bar"})
    with pytest.raises(ConfigError, match=r"'foo'") as info:
        dissect(data)
    for family in ("torchvision", "timm", "hf", "python"):
        assert family in str(info.value)


def test_unknown_layer_lists_the_valid_layers(no_ray, good_folder, tmp_path):
    data = config(good_folder, tmp_path, layers=["layer2", "layer9"], neurons="0:2")
    with pytest.raises(ConfigError, match=r"unknown layer 'layer9'") as info:
        dissect(data)
    names = re.split(r"[,:]\s*", str(info.value))
    for valid in ("conv1", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"):
        assert valid in names


@pytest.mark.parametrize(
    "neurons, size",
    [({"fc": [3, 1000]}, 1000), ({"layer2": "0:129"}, 128), ({"layer2": [128]}, 128)],
    ids=["fc-index", "conv-range", "conv-index"],
)
def test_neurons_out_of_range_give_the_layer_size(no_ray, good_folder, tmp_path, neurons, size):
    # The full-size ResNet-18 (random weights, nothing downloaded): layer2 has 128 channels, fc 1000 classes.
    data = config(good_folder, tmp_path, target={"model": "torchvision:resnet18", "weights": "none"}, neurons=neurons)
    layer = next(iter(neurons))
    with pytest.raises(ConfigError, match=rf"layer '{layer}'.*has {size} neurons \(0\.\.{size - 1}\)"):
        dissect(data)


# ------------------------------------------------------------------------------------------------
# The probing set and the output location


def test_empty_folder_is_an_empty_probing_set(no_ray, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=rf"probe source '{re.escape(str(empty))}' holds no images"):
        dissect(config(str(empty), tmp_path))


def test_folder_of_text_files_is_an_empty_probing_set(no_ray, tmp_path):
    notes = tmp_path / "notes"
    (notes / "deep").mkdir(parents=True)
    (notes / "a.txt").write_text("a")
    (notes / "deep" / "b.txt").write_text("b")
    with pytest.raises(ConfigError, match=rf"probe source '{re.escape(str(notes))}' holds no images") as info:
        dissect(config(str(notes), tmp_path))
    assert ".jpg" in str(info.value) and ".png" in str(info.value)  # says what it looked for


def test_nonexistent_probe_path_is_named(no_ray, tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(ConfigError, match=rf"probe source '{re.escape(str(missing))}' does not exist"):
        dissect(config(str(missing), tmp_path))


def test_corrupt_parquet_shard_is_named(no_ray, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"image": pa.array([png((9, 99, 199))], pa.binary())}), shards / "part-0.parquet")
    broken = shards / "part-1.parquet"
    broken.write_bytes(b"PAR1 cut off by an interrupted upload")
    with pytest.raises(DndError, match=rf"Parquet probe file '{re.escape(str(broken))}'"):
        dissect(config(str(shards), tmp_path))


def test_unknown_generated_probe_renderer_is_named(no_ray, tmp_path):
    with pytest.raises(ConfigError, match=r"'circles'.*shapes"):
        dissect(config("gen://circles?n=4", tmp_path))


def test_unreachable_object_store_is_a_storage_error(no_ray, tmp_path):
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = config("s3://probe-bucket/images", tmp_path)
    data["probe"]["storage_options"] = {
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}, "key": "k", "secret": "s",
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    with pytest.raises(StorageError, match=r"probe source 's3://probe-bucket/images' cannot be reached"):
        dissect(data)


def test_unwritable_output_is_a_storage_error(no_ray, good_folder, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, so nothing can be created under it")
    out = blocker / "run"
    data = config(good_folder, tmp_path, output={"uri": str(out)})
    with pytest.raises(StorageError, match=rf"output location '{re.escape(str(out))}' is not writable"):
        dissect(data)


def test_probing_set_of_only_unreadable_files_names_the_reasons(local_ray, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"page{i}.jpg").write_bytes(f"<html>error {i}</html>".encode())
    (bad / "empty.png").write_bytes(b"")
    (bad / "cut.png").write_bytes(png((10, 120, 230), size=(64, 64))[:60])
    out = tmp_path / "run"
    with pytest.raises(DndError, match=r"the probing set has no usable image") as info:
        dissect(config(str(bad), tmp_path, output={"uri": str(out)}))
    message = str(info.value)
    assert "3 not a readable image" in message
    assert "1 empty file" in message
    assert "1 truncated image" in message
    from dnd.results import Results

    assert not Results(str(out)).complete  # a failed run is never marked finished


# ------------------------------------------------------------------------------------------------
# The command line


def test_cli_malformed_yaml_is_one_line_exit_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("target: {model: torchvision:resnet18\nlayers: [fc\n")
    out = cli("dissect", "bad.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("dnd: error: config bad.yaml is not valid YAML")
    assert "line 2" in lines[0]  # where the unclosed flow mapping is found to be broken
    assert out.stdout == ""


def test_cli_unknown_key_in_set_is_named(good_folder, tmp_path):
    import yaml

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config(good_folder, tmp_path)))
    out = cli("dissect", "run.yaml", "--set", "step1.topk=3", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("dnd: error: invalid run configuration")
    assert "step1.topk: unknown key" in out.stderr
    assert not (tmp_path / "run").exists()  # nothing was written


def test_cli_layers_lists_names_sizes_and_shapes_without_weights(tmp_path):
    # An empty TORCH_HOME: the listing must not need (or fetch) any weights.
    out = cli("layers", "torchvision:resnet18", env_extra={"TORCH_HOME": str(tmp_path / "torch")})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # ResNet-18 at 224x224: layer4 gives 512 maps of 7x7, fc the 1000 ImageNet logits.
    assert "layer4\t512\t512x7x7" in lines
    assert "layer1\t64\t64x56x56" in lines
    assert "fc\t1000\t1000" in lines
    assert not (tmp_path / "torch").exists()


def test_cli_show_prints_one_line_per_neuron(local_ray, tmp_path):
    uri = str(tmp_path / "run")
    data = config("gen://shapes?n=12&seed=5&size=40", tmp_path, output={"uri": uri})
    results = dissect(data)
    frame = results.neurons
    out = cli("show", uri)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(frame) == 4 + 2
    expected = {("layer2", n) for n in range(4)} | {("fc", n) for n in (0, 1)}
    seen = set()
    for line, row in zip(lines, frame.itertuples()):
        fields = line.split()
        layer, neuron, status = fields[0], int(fields[1]), fields[2]
        seen.add((layer, neuron))
        assert (layer, neuron) == (row.layer, row.neuron)
        assert status == "ok"
        # The first top images, by id prefix, in the run's order.
        prefixes = re.findall(r"\b([0-9a-f]{8})\*?=", line)
        assert prefixes == [t["image_id"][:8] for t in list(row.top_images)[:3]]
    assert seen == expected
    only_fc = cli("show", uri, "--layer", "fc")
    assert [line.split()[:2] for line in only_fc.stdout.splitlines()] == [["fc", "0"], ["fc", "1"]]
