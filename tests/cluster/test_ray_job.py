"""`ray job submit` of `dnd dissect` on a real Ray head, writing to S3 (moto on loopback):
an undisturbed run, a run stopped partway and resumed, and a run that loses an actor mid-stage."""

import os
import signal
import time

import pytest
from ray.job_submission import JobStatus

from tests.cluster.conftest import BUCKET, read_run, s3fs_for, submit, wait_for

# The smoke config made small enough for two CPUs; the same overrides every time, so every
# attempt below is the same config (and resumes rather than being refused).
OVERRIDES = [
    "probe.sources=[{uri: 'gen://shapes?n=120&seed=0&size=64'}]",
    "neurons={layer2: '0:4', fc: '0:4'}",
    "step1.top_k=3",
    "summarizer.candidates=2",
    "generator.images_per_concept=2",
    # No CLIP (and so a scoring function without image products): these tests are about jobs,
    # resumes and lost actors, and two embedding passes over S3 would double their Step 3.
    "selection.embedder=null",
    "selection.scoring=topk_squared",
]
EXPECTED = [("layer2", n) for n in range(4)] + [("fc", n) for n in range(4)]
CACHES = {"captions": "captioner_images", "concepts": "summarizer_requests", "generated": "generator_images",
          "generated_activations": "target_generated_images"}

pytestmark = pytest.mark.slow


def comparable(frame):
    """What a user reads from a run, keyed by neuron: exact text and image ids, and the numbers."""
    out = {}
    for row in frame.itertuples():
        out[(row.layer, int(row.neuron))] = {
            "status": row.status, "label": row.label, "labels": list(row.labels),
            "top": [t["image_id"] for t in row.top_images],
            "activations": [float(t["activation"]) for t in row.top_images],
            "candidates": [c["concept"] for c in row.candidates],
            "scores": [None if c["score"] is None else float(c["score"]) for c in row.candidates],
            "captions": [c["caption"] for c in row.captions],
        }
    return out


def assert_same_results(frame, reference):
    """The same labels, candidates, captions and top images as ``reference``. Activations and scores
    agree to float noise only: a restarted actor sees batches of other sizes, and CPU convolution
    kernels chosen per batch size round the last bits differently."""
    got, want = comparable(frame), comparable(reference)
    assert got.keys() == want.keys()
    for key in want:
        a, b = got[key], want[key]
        for field in ("status", "label", "labels", "top", "candidates", "captions"):
            assert a[field] == b[field], (key, field, a[field], b[field])
        assert a["activations"] == pytest.approx(b["activations"], rel=1e-4, abs=1e-5), key
        assert [s is None for s in a["scores"]] == [s is None for s in b["scores"]], key
        assert [s for s in a["scores"] if s is not None] == pytest.approx(
            [s for s in b["scores"] if s is not None], rel=1e-4, abs=1e-5), key


def assert_every_neuron_once(frame):
    keys = list(zip(frame["layer"], frame["neuron"].astype(int)))
    assert sorted(keys) == sorted(EXPECTED), keys
    assert (frame["status"] == "ok").all(), frame[["layer", "neuron", "status", "error"]]
    assert frame["label"].notna().all()


@pytest.fixture(scope="module")
def full_run(ray_head, s3):
    submit(ray_head, s3, "runs/full", OVERRIDES, "dnd-full")
    status, logs = wait_for(ray_head, "dnd-full")
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    frame, manifest = read_run(s3, "runs/full")
    return {"frame": frame, "manifest": manifest, "logs": logs}


def test_job_writes_every_neuron_to_s3(full_run):
    frame, manifest = full_run["frame"], full_run["manifest"]
    assert_every_neuron_once(frame)
    assert manifest["run"]["mode"] == "fresh" and not manifest["run"]["step1_from_checkpoint"]
    calls = manifest["model_calls"]
    assert calls["target_probe_images"] > 0 and calls["captioner_images"] > 0 and calls["generator_images"] > 0
    assert manifest["counts"]["status"] == {"ok": len(EXPECTED)}


def persisted_entries(s3, prefix):
    """Unique cache keys a (killed) attempt left in the bucket, per cache table."""
    import pyarrow.parquet as pq

    fs = s3fs_for(s3)
    out = {}
    for name in CACHES:
        folder = f"{BUCKET}/{prefix}/cache/{name}"
        files = [f for f in fs.find(folder) if f.endswith(".parquet")] if fs.exists(folder) else []
        keys = set()
        for f in files:
            keys.update(pq.read_table(f, columns=["key"], filesystem=fs).column("key").to_pylist())
        out[name] = len(keys)
    return out


def test_stopped_job_resumes_without_repeating_model_calls(ray_head, s3, full_run):
    prefix = "runs/resumed"
    submit(ray_head, s3, prefix, OVERRIDES, "dnd-resume-1")
    # Stop the job once Step 3 starts: Step 1, captions and concepts are done by then.
    status, logs = wait_for(ray_head, "dnd-resume-1", until_log="step 3: ")
    assert status not in (JobStatus.SUCCEEDED, JobStatus.FAILED), logs[-3000:]
    ray_head.client().stop_job("dnd-resume-1")
    status, logs = wait_for(ray_head, "dnd-resume-1")
    assert status == JobStatus.STOPPED
    fs = s3fs_for(s3)
    assert not fs.exists(f"{BUCKET}/{prefix}/_SUCCESS")
    assert fs.exists(f"{BUCKET}/{prefix}/_RUN")
    persisted = persisted_entries(s3, prefix)
    assert persisted["captions"] > 0 and persisted["concepts"] > 0

    # The same command again: resumed by default.
    submit(ray_head, s3, prefix, OVERRIDES, "dnd-resume-2")
    status, logs = wait_for(ray_head, "dnd-resume-2")
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "resuming the unfinished run" in logs
    frame, manifest = read_run(s3, prefix)
    assert_every_neuron_once(frame)
    assert_same_results(frame, full_run["frame"])
    assert manifest["run"] == {"mode": "resume", "config_digest": full_run["manifest"]["run"]["config_digest"],
                               "step1_from_checkpoint": True}
    calls, full_calls = manifest["model_calls"], full_run["manifest"]["model_calls"]
    assert calls["target_probe_images"] == 0
    for name, family in CACHES.items():
        # Everything the first attempt persisted was answered from its cache: the two attempts
        # together asked each model exactly what one undisturbed run asks.
        assert persisted[name] + calls[family] == full_calls[family], (name, persisted, calls, full_calls)

    # A different config at the same URI is refused with the way out named; nothing is touched.
    submit(ray_head, s3, prefix, [*OVERRIDES, "step1.top_k=2"], "dnd-resume-other")
    status, logs = wait_for(ray_head, "dnd-resume-other")
    assert status == JobStatus.FAILED
    assert "holds a run of another config" in logs and "--overwrite" in logs
    assert fs.exists(f"{BUCKET}/{prefix}/_SUCCESS")


def _job_id(ray_head, submission_id):
    """Ray's job id of a submission, once its driver has started (None before)."""
    return ray_head.client().get_job_info(submission_id).job_id


def _activation_actors(ray_head, job_id, states=("PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD")):
    """The activation stage's actors (pass A, pass B and Step 3 all use ProbeActivations) that
    belong to ``job_id``: actors of earlier jobs on this tier-wide head never count."""
    from ray.util.state import list_actors

    return [actor for actor in list_actors(address=ray_head.dashboard, filters=[("job_id", "=", job_id)],
                                           limit=10_000, raise_on_missing_output=False)
            if "ProbeActivations" in actor.class_name and actor.state in states]


def _first_activation_worker(ray_head, submission_id, timeout=600):
    """Poll Ray's state API until the job has an activation actor with a worker process (from its
    lease on, well before its constructor returns, so the window is seconds wide); or the job ends."""
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    job_id = None
    while time.time() < deadline:
        status = ray_head.client().get_job_status(submission_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            logs = ray_head.client().get_job_logs(submission_id)
            raise AssertionError(f"job {submission_id} ended ({status}) before an activation actor "
                                 f"of it was seen alive:\n{logs[-3000:]}")
        job_id = job_id or _job_id(ray_head, submission_id)
        if job_id is not None:
            for actor in _activation_actors(ray_head, job_id, states=("PENDING_CREATION", "ALIVE")):
                if actor.pid:
                    return job_id, actor
        time.sleep(0.1)
    raise AssertionError(f"job {submission_id} showed no activation actor with a process in {timeout}s")


def test_actor_killed_mid_stage_is_restarted_and_nothing_is_lost(ray_head, s3, full_run):
    prefix = "runs/fault"
    submit(ray_head, s3, prefix, OVERRIDES, "dnd-fault")
    # Kill the first activation actor of this job as soon as it has a worker process.
    job_id, victim = _first_activation_worker(ray_head, "dnd-fault")
    os.kill(victim.pid, signal.SIGKILL)
    status, logs = wait_for(ray_head, "dnd-fault")
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    frame, manifest = read_run(s3, prefix)
    assert_every_neuron_once(frame)
    assert_same_results(frame, full_run["frame"])
    assert manifest["counts"]["images_used"] == full_run["manifest"]["counts"]["images_used"]
    from ray.util.state import get_actor

    # The run went on because Ray replaced the killed actor, not because it was no longer needed:
    # either the actor itself was restarted, or Ray Data's pool started one more than the same
    # config's undisturbed job did (fixed-size pools: pass A, pass B and Step 3 each start the same
    # number of activation actors every run).
    killed = get_actor(victim.actor_id, address=ray_head.dashboard)
    assert killed.job_id == job_id
    started = len(_activation_actors(ray_head, job_id))
    undisturbed = len(_activation_actors(ray_head, _job_id(ray_head, "dnd-full")))
    assert undisturbed > 0
    assert killed.num_restarts >= 1 or started > undisturbed, (
        f"the killed activation actor was neither restarted nor replaced ({started} actors in this job, "
        f"{undisturbed} in the undisturbed one)")
