"""Storage that cannot work fails the run with a clear message before any model work starts."""

import os
import subprocess

import requests

from tests.cluster.conftest import BUCKET, SMOKE, free_ports, ray_env


def dissect(out, env_changes):
    env = ray_env()
    env.pop("RAY_ADDRESS", None)
    env.update(env_changes)
    return subprocess.run(["dnd", "dissect", SMOKE, "--out", out], env=env, capture_output=True, text=True, timeout=300)


def assert_refused_before_model_work(result, *phrases):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # "dissecting ..." is logged once the target model has been built; Ray starts after it.
    assert "dissecting" not in result.stderr and "Started a local Ray instance" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("dnd: error: output location")
    for phrase in phrases:
        assert phrase in message, message


def test_bucket_that_does_not_exist(s3):
    result = dissect("s3://no-such-bucket/runs/a", s3["env"])
    assert_refused_before_model_work(result, "'s3://no-such-bucket/runs/a'", "the bucket does not exist")
    assert "no-such-bucket" not in {b["Name"] for b in s3["client"].list_buckets()["Buckets"]}


def test_wrong_credentials(s3):
    # moto checks signatures only once told to; the bucket exists, so only the key is wrong.
    requests.post(f"{s3['endpoint']}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        result = dissect(f"s3://{BUCKET}/runs/wrong-key", {**s3["env"], "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG"})
    finally:
        requests.post(f"{s3['endpoint']}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()
    assert_refused_before_model_work(result, "access was refused", "credentials")


def test_endpoint_that_is_down(s3):
    [port] = free_ports(1)  # nothing listens there
    result = dissect(f"s3://{BUCKET}/runs/down", {**s3["env"], "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                                                  "AWS_MAX_ATTEMPTS": "2"})
    assert_refused_before_model_work(result, "cannot be reached", f"127.0.0.1:{port}")
