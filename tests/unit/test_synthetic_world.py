"""The planted-concept world: determinism, planted biases, phrases, the pixel-only captioner and the
generator. No Ray, no weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dnd.captioning.base import CAPTIONERS
from dnd.errors import ConfigError, DndError
from dnd.generation.base import GENERATORS, PROMPT_TEMPLATE
from dnd.synthetic import world
from dnd.synthetic.captioner import SyntheticCaptioner
from dnd.synthetic.generator import SyntheticGenerator
from dnd.synthetic.world import COLORS, SHAPES, Concept, parse_phrase, read_phrase


def _main_phrase(caption: str) -> Concept | None:
    """The concept of the first object a caption names ("a red circle and ... on a ...")."""
    return parse_phrase(caption.split(" on a ")[0].split(" and ")[0])


# ---------------------------------------------------------------------------------------------
# Scenes and probes


def test_probe_is_deterministic_for_a_seed(tmp_path):
    meta_a = world.render_probe(tmp_path / "a" / "images", 12, seed=3)
    meta_b = world.render_probe(tmp_path / "b" / "images", 12, seed=3)
    meta_c = world.render_probe(tmp_path / "c" / "images", 12, seed=4)
    assert meta_a["images"] == meta_b["images"]
    assert meta_a["images"] != meta_c["images"]
    for entry in meta_a["images"]:
        a = (tmp_path / "a" / "images" / entry["file"]).read_bytes()
        b = (tmp_path / "b" / "images" / entry["file"]).read_bytes()
        assert a == b
    # Image i does not depend on how many images the probe has.
    world.render_probe(tmp_path / "d" / "images", 5, seed=3)
    assert (tmp_path / "d" / "images" / "probe_00004.png").read_bytes() == (tmp_path / "a" / "images" / "probe_00004.png").read_bytes()


def test_probe_folder_holds_only_images_and_metadata_sits_beside_it(tmp_path):
    out = tmp_path / "probe" / "images"
    meta = world.render_probe(out, 6, seed=0)
    assert sorted(p.name for p in out.iterdir()) == [f"probe_{i:05d}.png" for i in range(6)]
    on_disk = json.loads((tmp_path / "probe" / "probe_metadata.json").read_text())
    assert on_disk == meta
    first = meta["images"][0]
    image = Image.open(out / first["file"])
    assert image.size == (world.SIZE, world.SIZE) and image.mode == "RGB"
    for obj in first["objects"]:
        x0, y0, x1, y1 = obj["bbox"]
        assert 0 <= x0 < x1 <= world.SIZE and 0 <= y0 < y1 <= world.SIZE
        assert obj["shape"] in SHAPES and obj["color"] in COLORS


def test_probe_refuses_bad_arguments(tmp_path):
    with pytest.raises(DndError, match="n=0"):
        world.render_probe(tmp_path / "x", 0)
    with pytest.raises(DndError, match="inside the probe folder"):
        world.render_probe(tmp_path / "x", 2, metadata_path=tmp_path / "x" / "meta.json")


def test_scene_pixels_and_masks_are_deterministic():
    scene = world.sample_scene(np.random.default_rng(11))
    again = world.sample_scene(np.random.default_rng(11))
    assert scene == again
    a, b = world.render(scene), world.render(again)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    # Each mask covers its object's box, and the object's colour shows there.
    for obj, mask in zip(scene.objects, a.masks):
        x0, y0, x1, y1 = obj.bbox(world.SIZE)
        assert mask[y0:y1, x0:x1].sum() > 0.9 * mask.sum() > 0


def test_probe_carries_the_planted_biases_and_training_does_not():
    probe = [world.probe_scene(0, i) for i in range(600)]
    objects = [o for s in probe for o in s.objects]
    red = [o for o in objects if o.color == "red"]
    circles = [o for o in objects if o.shape == "circle"]
    assert red and all(o.shape == "circle" for o in red)
    assert sum(o.color == "red" for o in circles) / len(circles) > 0.6
    orange = [o for o in objects if o.color == "orange"]
    diagonal = [o for o in objects if o.texture == "diagonal stripes"]
    assert orange and all(o.texture == "diagonal stripes" for o in orange)
    assert sum(o.color == "orange" for o in diagonal) / len(diagonal) > 0.6
    for scene in probe:
        small_only = [o for o in scene.objects if o.shape in ("star", "cross") or o.color == "purple"]
        if small_only:
            assert all(o.size == "small" for o in small_only)
            assert sum(o.size == "large" for o in scene.objects) >= 2
    assert any(o.shape == "star" for o in objects)

    rng = np.random.default_rng(0)
    training = [o for _ in range(300) for o in world.sample_scene(rng, world.TRAINING).objects]
    assert {o.shape for o in training if o.color == "red"} == set(SHAPES)
    assert any(o.shape == "star" and o.size == "large" for o in training)

    unbiased = [o for i in range(300) for o in world.probe_scene(0, i, world.PROBE_UNBIASED).objects]
    assert len({o.shape for o in unbiased if o.color == "red"}) > 1


# ---------------------------------------------------------------------------------------------
# Phrases


@pytest.mark.parametrize("attribute", ["color", "shape", "texture", "size", "background"])
def test_every_vocabulary_term_reads_back(attribute):
    for term in world.VOCABULARY[attribute]:
        # A texture is read from its name ("vertical stripes") and from a caption's adjective ("vertically striped").
        spellings = {term, world.TEXTURE_ADJECTIVES.get(term) or term}
        for words in spellings:
            concept = parse_phrase(words)
            assert concept is not None, words
            assert getattr(concept, attribute) == term
            # Canonical phrases round-trip.
            assert parse_phrase(concept.phrase) == concept


@pytest.mark.parametrize(
    "text, expected",
    [
        ("red", Concept(color="red")),
        ("red circle", Concept(color="red", shape="circle")),
        ("striped square", Concept(shape="square", texture="stripes")),
        ("small star", Concept(shape="star", size="small")),
        ("blue checkered triangle", Concept(color="blue", shape="triangle", texture="checkerboard")),
        ("One realistic image of small stars", Concept(shape="star", size="small")),
        (PROMPT_TEMPLATE.format("crosses with vertical stripes"), Concept(shape="cross", texture="vertical stripes")),
        ("a horizontally striped ring on a noisy background", Concept(shape="ring", texture="horizontal stripes", background="noisy")),
        ("Polka dots", Concept(texture="dots")),
        ("grey background", Concept(background="gray")),
        ("the yellow objects", Concept(color="yellow")),
    ],
)
def test_phrases_of_the_vocabulary_are_read(text, expected):
    assert parse_phrase(text) == expected


def test_phrases_outside_the_vocabulary_are_refused_with_the_reason():
    reading = read_phrase("One realistic image of a fluffy red dog")
    assert reading.concept is None
    assert reading.unknown_words == ("fluffy", "dog")
    assert "fluffy" in reading.reason and "dog" in reading.reason
    contradiction = read_phrase("red blue circle")
    assert contradiction.concept is None and "contradictory colors" in contradiction.reason
    empty = read_phrase("one realistic image of an object")
    assert empty.concept is None and "no word of the world's vocabulary" in empty.reason
    with pytest.raises(DndError, match="must be a string"):
        read_phrase(None)  # type: ignore[arg-type]


def test_concept_matching_follows_the_phrase():
    obj = world.SceneObject("square", "blue", "vertical stripes", "small", 0.12, (0.5, 0.5), 0.0, (40, 75, 220))
    assert parse_phrase("striped square").matches(obj)
    assert parse_phrase("small blue").matches(obj)
    assert not parse_phrase("horizontal stripes").matches(obj)
    assert not parse_phrase("large square").matches(obj)


# ---------------------------------------------------------------------------------------------
# Captioner


def _single_objects(seed: int = 0):
    """Three objects of every colour × shape, alone in a frame, both sizes, any texture."""
    rng = np.random.default_rng(seed)
    for k in range(3):
        for color in COLORS:
            for shape in SHAPES:
                size = "small" if k == 0 else "large"
                scene = world.concept_scene(Concept(color=color, shape=shape, size=size), rng)
                scene = world.Scene(scene.background, scene.objects[:1], scene.render_seed)
                yield scene.objects[0], world.render(scene).pil()


def test_captioner_names_colour_and_shape_of_single_objects():
    captioner = CAPTIONERS.create("synthetic")
    samples = list(_single_objects())
    assert len(samples) >= 100
    captions = captioner.caption([image for _, image in samples])
    right = 0
    for (obj, _), caption in zip(samples, captions):
        concept = _main_phrase(caption)
        right += concept is not None and concept.color == obj.color and concept.shape == obj.shape
        if obj.size == "small":
            assert "small" in caption, caption
    assert right / len(samples) >= 0.9, captions
    assert captioner.caption([image for _, image in samples[:5]]) == captions[:5]


def test_captioner_names_objects_in_their_crops():
    captioner = SyntheticCaptioner()
    right = total = 0
    for i in range(60):
        scene = world.probe_scene(21, i)
        image = world.render(scene).pil()
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox(world.SIZE)
            # The metadata box, with a little margin as an attention crop would have.
            crop = image.crop((max(0, x0 - 2), max(0, y0 - 2), min(world.SIZE, x1 + 2), min(world.SIZE, y1 + 2)))
            concept = _main_phrase(captioner.caption([crop])[0])
            total += 1
            right += concept is not None and concept.color == obj.color and concept.shape == obj.shape
    assert total >= 100
    assert right / total >= 0.9


def test_a_crop_to_the_objects_own_box_shows_its_shape_and_a_crop_inside_it_does_not():
    """An Otsu box often fits an object exactly: a circle then grazes all four sides of the frame
    and must still be called a circle. A box well inside a large object shows only its surface."""
    captioner = SyntheticCaptioner()
    rng = np.random.default_rng(8)
    exact = inside = total = total_inside = 0
    for shape in ("circle", "square", "ring", "triangle", "star"):
        for _ in range(5):
            scene = world.concept_scene(Concept(color="red", shape=shape, size="large"), rng)
            scene = world.Scene(scene.background, scene.objects[:1], scene.render_seed)
            image = world.render(scene).pil()
            x0, y0, x1, y1 = scene.objects[0].bbox(world.SIZE)
            exact += _main_phrase(captioner.caption([image.crop((x0, y0, x1, y1))])[0]).shape == shape
            total += 1
            if shape in ("circle", "square"):  # filled, so the middle half of the box is all object
                inset = (x1 - x0) // 4
                inside += "close up" in captioner.caption([image.crop((x0 + inset, y0 + inset, x1 - inset, y1 - inset))])[0]
                total_inside += 1
    assert exact / total >= 0.9
    assert inside / total_inside >= 0.9


def test_captioner_reads_textures_and_backgrounds_of_large_objects():
    captioner = SyntheticCaptioner()
    rng = np.random.default_rng(5)
    right = total = 0
    for texture in world.TEXTURES:
        for background in world.BACKGROUNDS:
            for _ in range(3):
                scene = world.concept_scene(Concept(shape="square", texture=texture, size="large", background=background), rng)
                scene = world.Scene(scene.background, scene.objects[:1], scene.render_seed)
                concept = parse_phrase(captioner.caption([world.render(scene).pil()])[0])
                total += 1
                right += concept is not None and (concept.texture or "solid") == texture and concept.background == background
    assert right / total >= 0.85


def test_whole_images_miss_small_objects_that_crops_show():
    """The reason attention crops matter: beside two large distractors a small star goes
    unmentioned in the whole image, but its crop is described as a star."""
    captioner = SyntheticCaptioner()
    scenes = [s for s in (world.probe_scene(0, i) for i in range(300)) if any(o.shape == "star" for o in s.objects)]
    assert len(scenes) >= 10
    whole_mentions = crop_mentions = 0
    for scene in scenes:
        image = world.render(scene).pil()
        whole_mentions += "star" in captioner.caption([image])[0]
        star = next(o for o in scene.objects if o.shape == "star")
        x0, y0, x1, y1 = star.bbox(world.SIZE)
        crop = image.crop((max(0, x0 - 2), max(0, y0 - 2), min(world.SIZE, x1 + 2), min(world.SIZE, y1 + 2)))
        crop_mentions += "star" in captioner.caption([crop])[0]
    assert whole_mentions / len(scenes) <= 0.1
    assert crop_mentions / len(scenes) >= 0.8


def test_captioner_options_and_odd_inputs():
    assert SyntheticCaptioner().cache_key == "synthetic-caption|v2|max_objects=2"
    assert SyntheticCaptioner(max_objects=1).cache_key.endswith("max_objects=1")
    with pytest.raises(ConfigError, match="max_objects"):
        SyntheticCaptioner(max_objects=0)
    captioner = SyntheticCaptioner()
    assert captioner.caption([Image.new("RGB", (96, 96), (128, 128, 128))]) == ["a gray background"]
    # Grayscale and odd-sized inputs are described, not rejected.
    tiny = Image.new("L", (7, 5), 20)
    assert isinstance(captioner.caption([tiny])[0], str)


# ---------------------------------------------------------------------------------------------
# Generator


def test_generator_renders_q_images_reproducibly():
    generator = GENERATORS.create("synthetic")
    prompt = PROMPT_TEMPLATE.format("blue triangle")
    seeds = list(range(10))
    first = generator.generate([prompt] * 10, seeds)
    second = generator.generate([prompt] * 10, seeds)
    assert len(first) == 10 and all(g.image is not None and g.refused is None for g in first)
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert len({np.asarray(g.image).tobytes() for g in first}) == 10
    assert first[0].image.size == (world.SIZE, world.SIZE)
    # What is drawn is the concept: the captioner finds a blue triangle in (nearly) every image.
    captions = SyntheticCaptioner().caption([g.image for g in first])
    assert sum(c.count("blue") > 0 and "triangle" in c for c in captions) >= 9, captions


def test_generator_matches_render_concept():
    generator = SyntheticGenerator()
    image = generator.generate(["One realistic image of small stars"], [42])[0].image
    expected = world.render_concept("One realistic image of small stars", np.random.default_rng(42))
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_generator_refuses_unknown_phrases_with_the_reason():
    generator = SyntheticGenerator()
    out = generator.generate([PROMPT_TEMPLATE.format("xyz"), PROMPT_TEMPLATE.format("red blue square")], [0, 0])
    assert out[0].image is None and out[0].refused == "cannot render 'xyz': unknown words ['xyz']"
    assert out[1].image is None and "contradictory colors" in out[1].refused
    assert world.render_concept("xyz", np.random.default_rng(0)) is None


def test_generator_options():
    big = SyntheticGenerator(size=160)
    assert big.cache_key == "synthetic-generate|v2|size=160" != SyntheticGenerator().cache_key
    assert big.generate(["red"], [1])[0].image.size == (160, 160)
    with pytest.raises(ConfigError, match="size"):
        SyntheticGenerator(size=4)
    with pytest.raises(ConfigError, match="one seed per prompt"):
        big.generate(["red", "blue"], [1])
