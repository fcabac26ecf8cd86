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
