"""What pyproject.toml must keep so that a fresh virtual environment resolves quickly and CI
fails on a missing install step (README, Development)."""

import re
import tomllib
from pathlib import Path

PROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


def requirement_names(requirements):
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in requirements}


def test_no_direct_boto3_or_botocore_requirement():
    # A direct one is resolved before aiobotocore's pinned botocore range and sends pip backtracking
    # through s3fs and ray releases (issue 12); boto3 reaches the tests through moto instead.
    project = PROJECT["project"]
    every = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    assert not requirement_names(every) & {"boto3", "botocore", "aiobotocore"}
    assert "moto" in requirement_names(project["optional-dependencies"]["test"])
    assert "s3fs" in requirement_names(project["dependencies"])


def test_pytest_refuses_unknown_options_and_markers():
    # Without pytest-timeout installed, the `timeout` ini option is unknown: with --strict-config
    # that stops the run at once instead of silently running without time limits.
    options = PROJECT["tool"]["pytest"]["ini_options"]
    assert "--strict-config" in options["addopts"] and "--strict-markers" in options["addopts"]
    assert "timeout" in options
    assert "pytest-timeout" in requirement_names(PROJECT["project"]["optional-dependencies"]["test"])
