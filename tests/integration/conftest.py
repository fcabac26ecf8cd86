"""Integration-test settings shared by every module here."""

import os

# Set before any test module imports transformers or diffusers, which read it at import time:
# tests build their models in memory or load them from a temporary directory, never download.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="package")
def local_ray():
    """One local Ray for the integration tier: 2 CPUs and a small, explicit object store. Package
    scope: it is shut down after this tier's last test, not left running through the unit tier."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The smoke run of examples/smoke.yaml (the default method, paper), made small enough to finish fast
# on two CPUs: nine neurons of two layers (a spatial one with attention crops, a linear one without),
# three candidates each, two generated images per candidate. One such run is shared by every module
# that only reads a finished run (the full-pipeline checks, the report and analyses, the Serve
# comparison): each dissection costs a minute and a half of model loading on two CPUs, most of this
# tier's time.
SMOKE_NEURONS = {"layer2": "0:6", "fc": "0:3"}
SMOKE_TOP_K = 3
SMOKE_IMAGES_PER_CONCEPT = 2


def smoke_config(out, **changes):
    """examples/smoke.yaml reduced, writing to ``out``. ``changes``: a dotted key sets one value
    (``"generator.images_per_concept": 3``); a section name with a dict updates that section's keys
    (``captioner={"backend": "serve"}``)."""
    import yaml

    from dnd.config import load_config

    with open(os.path.join(REPO, "examples", "smoke.yaml")) as handle:
        data = yaml.safe_load(handle)
    data.pop("ray")  # the tier's own local Ray (below) is used, not one the config starts
    data["probe"]["sources"] = [{"uri": "gen://shapes?n=48&seed=0&size=64"}]
    data["neurons"] = dict(SMOKE_NEURONS)
    data["step1"]["top_k"] = SMOKE_TOP_K
    data["generator"]["images_per_concept"] = SMOKE_IMAGES_PER_CONCEPT
    data["output"]["uri"] = str(out)
    for key, value in changes.items():
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if len(parts) == 1 and isinstance(value, dict) and isinstance(node.get(key), dict):
            node[key].update(value)
        else:
            node[parts[-1]] = value
    return load_config(data)


@pytest.fixture(scope="package")
def smoke_run(local_ray, tmp_path_factory):
    """One finished smoke run for the whole tier: (results, run folder). Tests read it and never
    write into it; a test that reruns or changes it works on a copy (see ``copy_of_run``)."""
    from dnd.pipeline import dissect

    out = tmp_path_factory.mktemp("smoke") / "run"
    results = dissect(smoke_config(out), log=lambda message: None)
    return results, out


@pytest.fixture(scope="package")
def demo_run(local_ray, tmp_path_factory):
    """One `dnd demo` run (method dnd, 600 probe images, scored against the planted truth) for every
    module that reads it: (results, recovery summary, run folder). Read-only, like ``smoke_run``."""
    from dnd.synthetic.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    results, summary = run_demo(str(out), log=lambda message: None)
    return results, summary, out


def copy_of_run(run, into):
    """A copy of a finished run folder (results, checkpoints and caches) at ``into``: the output URI
    is not part of a run's identity, so the same config at the copy resumes or reruns it there."""
    import shutil

    shutil.copytree(run, into)
    return into
