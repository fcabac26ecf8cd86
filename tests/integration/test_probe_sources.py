"""Probing-set sources through the real pipeline (Step 1 only): folders, ImageFolder trees, Parquet,
generated images and S3, with bad files, odd image modes and duplicates mixed in.

Every expectation is computed here from the bytes this module wrote: an image's id is the first 16
hex digits of the SHA-256 of its bytes, a bad file is named in ``_SUCCESS`` with its reason, and
each source is credited with the images it contributed.
"""

import hashlib
import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from dnd.probe.generated import render_shapes
from dnd.probe.sources import image_id

LAYERS = ["layer2", "fc"]
NEURONS = {"layer2": "0:6", "fc": [0, 4, 9]}
EXPECTED_NEURONS = {("layer2", n) for n in range(6)} | {("fc", n) for n in (0, 4, 9)}
GEN_URI = "gen://shapes?n=20&seed=1&size=48"


def sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def picture(seed: int, size=(48, 40)) -> Image.Image:
    """An RGB picture with a coloured background and a few filled shapes, different for each seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    background = tuple(int(c) for c in rng.integers(0, 256, 3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, max(1, width - 4))), int(rng.integers(0, max(1, height - 4)))
        x1, y1 = int(rng.integers(x0 + 1, width + 1)), int(rng.integers(y0 + 1, height + 1))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write(path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def base_config(sources, out_uri, **probe):
    return {
        "target": {"model": "torchvision:resnet18", "weights": "random-tiny", "batch_size": 16},
        "layers": LAYERS,
        "neurons": NEURONS,
        "probe": {"sources": sources, "files_per_read_task": 8, **probe},
        "step1": {"top_k": 3},
        "captioner": None,
        "output": {"uri": out_uri},
    }


def assert_one_row_per_requested_neuron(frame):
    pairs = list(zip(frame["layer"], frame["neuron"]))
    assert sorted(pairs) == sorted(EXPECTED_NEURONS)
    assert set(frame["status"]) == {"ok"}


# ------------------------------------------------------------------------------------------------
# Local sources: plain folder, ImageFolder tree, Parquet (bytes and HF-style struct), gen://


@pytest.fixture(scope="module")
def probe_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    plain, tree = root / "plain", root / "classes_tree"
    good = {}  # path -> bytes of every image that must be used

    def add(path, data):
        good[write(path, data)] = data

    # A plain folder: nested subfolders, mixed extensions (upper-case too), a space in a name.
    add(plain / "red square.png", encode(picture(1), "PNG"))
    add(plain / "sub" / "a.jpg", encode(picture(2), "JPEG", quality=90))
    add(plain / "sub" / "deeper" / "b.JPG", encode(picture(3, (64, 48)), "JPEG", quality=85))
    shared = encode(picture(4), "PNG")
    add(plain / "sub" / "c.png", shared)
    # Odd modes that must decode and count as used.
    add(plain / "modes" / "gray.png", encode(picture(5).convert("L"), "PNG"))
    rgba = picture(6).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    add(plain / "modes" / "rgba.png", encode(rgba, "PNG"))
    add(plain / "modes" / "palette.png", encode(picture(7).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"))
    add(plain / "modes" / "cmyk.jpg", encode(picture(8).convert("CMYK"), "JPEG", quality=90))
    deep = np.random.default_rng(9).integers(0, 65535, size=(30, 40)).astype(np.uint16)
    deep_image = Image.fromarray(deep)
    assert deep_image.mode == "I;16"
    add(plain / "modes" / "deep16.png", encode(deep_image, "PNG"))
    add(plain / "modes" / "tiny.png", encode(picture(10, (5, 7)), "PNG"))
    # Bad files: skipped, counted and named, never fatal.
    bad = {
        "not a readable image": write(plain / "bad" / "notes.jpg", b"these are my notes, not a picture\n"),
        "truncated image": write(plain / "bad" / "cut.jpg", encode(picture(11, (64, 64)), "JPEG", quality=95)[:700]),
        "empty file": write(plain / "bad" / "empty.png", b""),
    }
    write(plain / "readme.txt", b"not an image extension: never read")

    # An ImageFolder tree: one folder per class; one file repeats the bytes of plain/sub/c.png.
    for c, label in enumerate(("bird", "cat", "dog")):
        for i in range(3):
            seed = 100 + 10 * c + i
            if i == 1:
                add(tree / label / f"{i}.jpg", encode(picture(seed), "JPEG", quality=90))
            else:
                add(tree / label / f"{i}.png", encode(picture(seed), "PNG"))
    duplicate = write(tree / "dog" / "copy_of_c.png", shared)

    # Parquet: a plain bytes column (one null cell), and an HF-datasets-style struct column.
    bytes_rows = [encode(picture(200 + i), "PNG") for i in range(6)] + [None]
    bytes_file = root / "bytes.parquet"
    pq.write_table(pa.table({"image": pa.array(bytes_rows, pa.binary()), "label": list(range(7))}), bytes_file)
    hf_rows = [encode(picture(300 + i), "JPEG" if i % 2 else "PNG") for i in range(8)]
    struct = pa.array(
        [{"bytes": data, "path": f"img_{i}.png"} for i, data in enumerate(hf_rows)],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    hf_file = root / "hf_style.parquet"
    pq.write_table(pa.table({"img": struct, "label": [i % 3 for i in range(8)]}), hf_file)

    return {
        "root": root, "plain": str(plain), "tree": str(tree), "good": good, "bad": bad, "shared": shared,
        "original": str(plain / "sub" / "c.png"), "duplicate": duplicate,
        "bytes_file": str(bytes_file), "bytes_rows": bytes_rows, "hf_file": str(hf_file), "hf_rows": hf_rows,
    }


@pytest.fixture(scope="module")
def local_run(local_ray, probe_tree, tmp_path_factory):
    from dnd.pipeline import dissect

    out = tmp_path_factory.mktemp("out") / "run"
    sources = [
        {"uri": probe_tree["plain"]},  # name defaults to the folder's name
        {"uri": probe_tree["tree"], "name": "classes"},
        {"uri": probe_tree["bytes_file"]},
        {"uri": probe_tree["hf_file"], "image_column": "img", "limit": 5, "name": "hf"},
        {"uri": GEN_URI},
    ]
    results = dissect(base_config(sources, str(out)), log=lambda m: None)
    return results


def expected_ids(probe_tree):
    """image id -> (source name, ref) for every image that must be used (the duplicate excluded)."""
    ids = {}
    for path, data in probe_tree["good"].items():
        source = "classes" if path.startswith(probe_tree["tree"]) else "plain"
        ids.setdefault(sha16(data), (source, path))
    for row, data in enumerate(probe_tree["bytes_rows"][:6]):
        ids[sha16(data)] = ("bytes.parquet", f"{probe_tree['bytes_file']}#row={row}&column=image")
    for row, data in enumerate(probe_tree["hf_rows"][:5]):
        ids[sha16(data)] = ("hf", f"{probe_tree['hf_file']}#row={row}&column=img")
    for index in range(20):
        ids[sha16(render_shapes(1, index, 48))] = ("gen:shapes", f"{GEN_URI}#i={index}")
    return ids


def test_every_requested_neuron_gets_one_ok_row(local_run):
    assert_one_row_per_requested_neuron(local_run.neurons)


def test_counts_per_source_match_what_was_written(local_run, probe_tree):
    counts = local_run.manifest["counts"]
    # 10 good files in plain/ (3 bad, readme.txt ignored), 9 distinct + 1 repeated in the tree,
    # 6 of 7 Parquet cells, the first 5 of 8 struct rows, 20 generated.
    assert counts["probe_sources"] == {"plain": 13, "classes": 10, "bytes.parquet": 7, "hf": 5, "gen:shapes": 20}
    per_source = counts["images_per_source"]
    # The shared bytes count once, for the source listed first (plain/), whatever the arrival order.
    assert per_source == {"plain": 10, "classes": 9, "bytes.parquet": 6, "hf": 5, "gen:shapes": 20}
    assert counts["images_read"] == 13 + 10 + 7 + 5 + 20
    assert counts["images_used"] == 50 == len(expected_ids(probe_tree))
    assert counts["images_skipped"] == {
        "not a readable image": 1, "truncated image": 1, "empty file": 1,
        "empty or non-bytes image cell": 1, "duplicate image": 1,
    }


def test_bad_files_are_named_with_their_reason(local_run, probe_tree):
    skipped = local_run.manifest["skipped"]
    bad = probe_tree["bad"]
    assert set(skipped) == {"not a readable image", "truncated image", "empty file",
                            "empty or non-bytes image cell", "duplicate image"}
    assert skipped["empty file"] == [f"{bad['empty file']}: empty file"]
    [unreadable] = skipped["not a readable image"]
    assert unreadable.startswith(f"{bad['not a readable image']}: not a readable image (")
    [truncated] = skipped["truncated image"]
    assert truncated.startswith(f"{bad['truncated image']}: truncated image (")
    assert skipped["empty or non-bytes image cell"] == [
        f"{probe_tree['bytes_file']}#row=6&column=image: empty or non-bytes image cell"
    ]
    original, duplicate = probe_tree["original"], probe_tree["duplicate"]
    assert skipped["duplicate image"] in (
        [f"{duplicate}: same bytes as {original}"], [f"{original}: same bytes as {duplicate}"]
    )
    # Odd modes (L, RGBA, P, CMYK, I;16, 5x7 px) are used, so no skip entry names them.
    named = " ".join(entry for entries in skipped.values() for entry in entries)
    for path in probe_tree["good"]:
        if "/modes/" in path:
            assert path not in named
    assert "readme.txt" not in named


def test_top_images_are_probe_files_or_their_crops(local_run, probe_tree):
    ids = expected_ids(probe_tree)
    bad_ids = {sha16(open(path, "rb").read()) for path in probe_tree["bad"].values()}
    images = local_run.images()
    probe_rows = images[images["kind"] == "probe"]
    crop_rows = images[images["kind"] == "crop"]
    assert len(probe_rows) > 0 and len(crop_rows) > 0
    # Stored probe images are the source bytes, under the id of those bytes, with where they came from.
    for row in probe_rows.itertuples():
        assert row.image_id in ids
        assert row.image_id == sha16(row.data) == image_id(row.data)
        source, ref = ids[row.image_id]
        if row.image_id == sha16(probe_tree["shared"]):
            assert row.ref in (probe_tree["original"], probe_tree["duplicate"])
            assert row.source in ("plain", "classes")
        else:
            assert (row.source, row.ref) == (source, ref)
        if not row.ref.startswith("gen://") and "#row=" not in row.ref:
            with open(row.ref, "rb") as handle:
                assert sha16(handle.read()) == row.image_id
    crops = {row.image_id: row for row in crop_rows.itertuples()}
    for row in crops.values():
        assert row.parent_id in ids
    for tops in local_run.neurons["top_images"]:
        assert len(tops) == 3
        for top in tops:
            assert top["image_id"] not in bad_ids
            if top["is_crop"]:
                assert top["image_id"] in crops and top["parent_id"] == crops[top["image_id"]].parent_id
            else:
                assert top["image_id"] in ids


# ------------------------------------------------------------------------------------------------
# S3: probe images read from a bucket and results written to one, on a moto server on loopback

PROBE_BUCKET, OUT_BUCKET = "dnd-probe", "dnd-out"


@pytest.fixture(scope="module")
def s3_server():
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        for bucket in (PROBE_BUCKET, OUT_BUCKET):
            client.create_bucket(Bucket=bucket)
        yield {"endpoint": endpoint, "client": client,
               "storage_options": {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"}}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_run(local_ray, s3_server):
    from dnd.pipeline import dissect

    client = s3_server["client"]
    objects = {}
    for i in range(8):
        key = f"probe/{'left' if i % 2 else 'right'}/{i}.{'jpg' if i % 3 == 0 else 'png'}"
        data = encode(picture(400 + i), "JPEG" if key.endswith("jpg") else "PNG", **({"quality": 90} if key.endswith("jpg") else {}))
        client.put_object(Bucket=PROBE_BUCKET, Key=key, Body=data)
        objects[f"s3://{PROBE_BUCKET}/{key}"] = data
    client.put_object(Bucket=PROBE_BUCKET, Key="probe/left/broken.jpg", Body=b"<html>access denied</html>")
    # No AWS_* variables are set for the workers: the endpoint is on a random port, so reading the
    # probe objects at all proves the pipeline hands probe.storage_options to the Ray workers.
    options = s3_server["storage_options"]
    config = base_config([{"uri": f"s3://{PROBE_BUCKET}/probe"}], f"s3://{OUT_BUCKET}/runs/r1", storage_options=options)
    config["output"]["storage_options"] = options
    results = dissect(config, log=lambda m: None)
    return {"results": results, "objects": objects}


def test_s3_probe_and_output_round_trip(s3_run, s3_server):
    import s3fs

    objects = s3_run["objects"]
    options = s3_server["storage_options"]
    # Read the neurons table straight from the bucket, not through the engine.
    fs = s3fs.S3FileSystem(key=options["key"], secret=options["secret"], client_kwargs=options["client_kwargs"],
                           skip_instance_cache=True)
    files = [f for f in fs.find(f"{OUT_BUCKET}/runs/r1/neurons") if f.endswith(".parquet")]
    assert files
    frame = pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files]).to_pandas()
    assert_one_row_per_requested_neuron(frame)
    ids = {sha16(data): uri for uri, data in objects.items()}
    for tops in frame["top_images"]:
        assert len(tops) == 3
        for top in tops:
            assert (top["parent_id"] if top["is_crop"] else top["image_id"]) in ids

    # _SUCCESS is in the bucket, written last, with the S3 refs of what was used and skipped.
    body = s3_server["client"].get_object(Bucket=OUT_BUCKET, Key="runs/r1/_SUCCESS")["Body"].read()
    manifest = json.loads(body)
    assert manifest["counts"]["images_per_source"] == {"probe": 8}
    assert manifest["counts"]["images_skipped"] == {"not a readable image": 1}
    [entry] = manifest["skipped"]["not a readable image"]
    assert re.match(rf"s3://{PROBE_BUCKET}/probe/left/broken\.jpg: not a readable image \(", entry)

    # The engine's own reader sees the same run, and stored probe images carry their S3 refs.
    results = s3_run["results"]
    assert results.manifest["counts"] == manifest["counts"]
    images = results.images()
    probe_rows = images[images["kind"] == "probe"]
    assert len(probe_rows) > 0
    for row in probe_rows.itertuples():
        assert row.ref in objects and sha16(objects[row.ref]) == row.image_id == sha16(row.data)


def test_s3_output_location_has_no_leftover_write_check(s3_run, s3_server):
    listing = s3_server["client"].list_objects_v2(Bucket=OUT_BUCKET, Prefix="runs/r1/")
    keys = {item["Key"] for item in listing.get("Contents", [])}
    assert "runs/r1/_SUCCESS" in keys
    assert any(k.startswith("runs/r1/neurons/") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("runs/r1/images/") and k.endswith(".parquet") for k in keys)
    assert not any("_dnd_write_check" in k for k in keys)


# ------------------------------------------------------------------------------------------------
# A Hugging Face dataset snapshot: Parquet shards beside a dataset card, as `huggingface-cli download`
# leaves them. The folder holds Parquet and no image files, so "auto" must read it as Parquet.


def test_dataset_snapshot_folder_is_read_as_parquet(local_ray, tmp_path):
    from dnd.pipeline import dissect

    snapshot = tmp_path / "snapshot"
    (snapshot / "data").mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: cc0\n---\n# Shapes\n")
    (snapshot / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    shards = [[encode(picture(500 + 10 * s + i), "PNG") for i in range(4)] for s in range(2)]
    for s, rows in enumerate(shards):
        column = pa.array([{"bytes": data, "path": f"{s}_{i}.png"} for i, data in enumerate(rows)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        pq.write_table(pa.table({"image": column}), snapshot / "data" / f"train-0000{s}-of-00002.parquet")
    results = dissect(base_config([{"uri": str(snapshot), "limit": 6}], str(tmp_path / "run")), log=lambda m: None)
    counts = results.manifest["counts"]
    assert counts["images_per_source"] == {"snapshot": 6}  # all 4 of the first shard, 2 of the second
    assert counts["images_skipped"] == {}
    used = {sha16(data) for data in shards[0] + shards[1][:2]}
    for tops in results.neurons["top_images"]:
        for top in tops:
            assert (top["parent_id"] if top["is_crop"] else top["image_id"]) in used
