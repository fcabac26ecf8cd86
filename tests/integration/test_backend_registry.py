"""Backends come from the ``dnd.backends`` entry points: a third-party package adds one without an
edit to dnd, and a broken one is named rather than silently dropped. Every backend's options are
checked on the driver, before any Ray work."""

from __future__ import annotations

import sys

import pytest

import dnd
import dnd.backends
from dnd.backends import load_backends
from dnd.captioning.base import CAPTIONERS
from dnd.errors import ConfigError
from tests.integration.conftest import smoke_config


def fake_distribution(root, name: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """An installed-looking package under ``root``: a dist-info with entry points, and its modules."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entries.items())
    (info / "entry_points.txt").write_text(f"[dnd.backends]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


CAPTIONER_SOURCE = '''
from dnd.captioning.base import CAPTIONERS


@CAPTIONERS.register("third-party-test")
class ThirdPartyCaptioner:
    cache_key = "third-party-test"

    def caption(self, images):
        return ["a third-party caption" for _ in images]
'''


def test_a_pip_package_adds_a_captioner_through_its_entry_point(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "dnd_thirdparty_test", {"captioner": "dnd_thirdparty_captioner"},
                      {"dnd_thirdparty_captioner": CAPTIONER_SOURCE})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(dnd.backends, "_loaded", False)
    assert "third-party-test" not in CAPTIONERS.names()
    load_backends()
    assert CAPTIONERS.create("third-party-test").caption([None, None]) == ["a third-party caption"] * 2
    # dnd's own backends come through the same group.
    assert {"hf", "openai-vision", "synthetic", "serve"} <= set(CAPTIONERS.names())
    sys.modules.pop("dnd_thirdparty_captioner", None)


def test_a_broken_backend_module_is_named_with_its_package(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "dnd_broken_test", {"broken": "dnd_broken_backend"},
                      {"dnd_broken_backend": "import a_module_that_does_not_exist\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(dnd.backends, "_loaded", False)
    with pytest.raises(ConfigError, match=r"'dnd_broken_backend' \(entry point 'broken' of dnd_broken_test\) cannot "
                                          r"be imported: No module named 'a_module_that_does_not_exist'"):
        load_backends()
    monkeypatch.setattr(dnd.backends, "_loaded", False)


@pytest.mark.parametrize(("section", "options", "message"), [
    ("captioner", {"max_lenght": 8}, "captioner.options for captioner 'hf': unknown option 'max_lenght'; its options are "
                                     "device, dtype, max_new_tokens, model, num_beams, prompt"),
    ("generator", {"steps": "20"}, "generator.options for generator 'diffusers': option 'steps' = '20': "),
    ("summarizer", {"min_shares": 0.5}, "summarizer.options for summarizer 'extractive': unknown option 'min_shares'"),
    ("selection.embedder", {"batch_size": 1.5}, "selection.embedder.options for embedder 'clip': option 'batch_size' = 1.5"),
])
def test_a_wrong_backend_option_fails_on_the_driver_in_one_line(tmp_path, section, options, message):
    node = {"options": {**({"model": "random-tiny"} if section != "summarizer" else {}), **options}}
    if section == "selection.embedder":
        config = smoke_config(tmp_path / "run", **{"selection.embedder.options": node["options"]})
    else:
        config = smoke_config(tmp_path / "run", **{section: node})
    with pytest.raises(ConfigError) as caught:
        dnd.dissect(config, log=lambda message: None)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    # Nothing ran and the URI is not claimed: the same command with the typo fixed starts afresh.
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_backend_that_cannot_start_in_its_actor_is_one_line_naming_the_stage(local_ray, tmp_path):
    # The option is well formed, so the driver accepts it; the model is found missing only when the
    # captioner's actor loads it (offline, no such folder or Hub id).
    config = smoke_config(tmp_path / "run", captioner={"options": {"model": "no-such-org/no-such-captioner"}},
                          **{"selection.enabled": False})
    with pytest.raises(ConfigError) as caught:
        dnd.dissect(config, log=lambda message: None)
    message = str(caught.value)
    assert message.startswith("step 2A (captions): cannot load the captioning model 'no-such-org/no-such-captioner'")
    assert "\n" not in message and "ray::" not in message and "Traceback" not in message


def test_a_backend_that_accepts_any_options_says_so():
    from types import SimpleNamespace

    from dnd.concepts.base import SUMMARIZERS
    from dnd.registry import check_options

    class Loose:
        accepts_any_options = True  # passes the rest on, e.g. to a model's own config

        def __init__(self, rate: float = 1.0, **extra):
            self.extra = extra

    class Strict:
        def __init__(self, rate: float = 1.0, **extra):
            self.extra = extra

    SUMMARIZERS.register("loose-test")(Loose)
    SUMMARIZERS.register("strict-test")(Strict)
    # **extra alone does not open the door: the named parameters are the options.
    with pytest.raises(ConfigError, match="unknown option 'anything'; its options are rate"):
        check_options(SUMMARIZERS, SimpleNamespace(backend="strict-test", options={"anything": 1}), "summarizer")
    check_options(SUMMARIZERS, SimpleNamespace(backend="loose-test", options={"rate": 2, "anything": 1}), "summarizer")
    with pytest.raises(ConfigError, match=r"option 'rate' = 'fast'"):
        check_options(SUMMARIZERS, SimpleNamespace(backend="loose-test", options={"rate": "fast"}), "summarizer")
