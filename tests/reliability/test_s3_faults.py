"""S3 that fails: transient 500s and slow answers are retried; a dead object fails its image only.

A ``segpipe run s3://… --out s3://…`` subprocess talks to moto through
:class:`s3_proxy.FaultProxy` (``AWS_ENDPOINT_URL_S3`` points at the proxy). Credentials
are a distinctive fake pair from the standard AWS environment variables; neither the key
id nor the secret may appear in anything the run wrote or printed.
"""

from __future__ import annotations

import pytest
from reliability_helpers import nuclei_tif, snapshot
from s3_proxy import FaultProxy

from segpipe import tables

pytestmark = pytest.mark.timeout(400)

KEY_ID = "AKIARELIABILITYKEY42"
SECRET = "rel1ab1l1ty-S3cret-do-not-print-9f83b2"


def _upload(s3, tmp_path) -> str:
    bucket = s3.bucket("faults")
    for name, seed in (("a.tif", 1), ("b.tif", 2), ("doomed.tif", 3)):
        path = nuclei_tif(tmp_path / name, seed=seed)
        s3.fs.put(str(path), f"{bucket}/archive/{name}")
    s3.fs.invalidate_cache()
    return bucket


def _all_text(s3, bucket: str, prefix: str) -> bytes:
    s3.fs.invalidate_cache()
    blobs = []
    for key in s3.fs.find(f"{bucket}/{prefix}"):
        blobs.append(key.encode())
        blobs.append(s3.fs.cat_file(key))
    return b"\n".join(blobs)


def test_s3_transient_and_permanent_faults(s3, tmp_path, run_segpipe):
    bucket = _upload(s3, tmp_path)
    opts = s3.storage_options
    env_base = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_SESSION_TOKEN": "", "AWS_SECURITY_TOKEN": "",
                "AWS_MAX_ATTEMPTS": "3"}  # botocore's own retries (with backoff), kept short
    settings = {"run.retries": 1, "run.retry_delay_s": 0.5}
    with FaultProxy(s3.endpoint_url) as proxy:
        env = {**env_base, "AWS_ENDPOINT_URL_S3": proxy.url}

        # 1. permanent: every read of doomed.tif answers 500; a and b are unaffected
        proxy.doomed = "doomed.tif"
        perm = run_segpipe(f"s3://{bucket}/archive", f"s3://{bucket}/perm", env=env, settings=settings)
        assert perm.returncode == 1, perm.stderr[-2000:]
        assert proxy.doomed_hits > 1  # it was retried before giving up
        states = {s["source_uri"].rsplit("/", 1)[-1]: s for s in tables.image_states(f"s3://{bucket}/perm", opts).values()}
        assert states["a.tif"]["status"] == states["b.tif"]["status"] == "done", {k: v["error"] for k, v in states.items()}
        doomed = states["doomed.tif"]
        assert doomed["status"] == "failed"
        assert "\n" not in doomed["error"] and "doomed.tif" in doomed["error"], doomed["error"]
        # the S3 error, named: the 500's reason (a HEAD has no body) or its <Message> (a GET)
        named = ("Internal Server Error", "injected fault")
        assert any(text in doomed["error"] for text in named), doomed["error"]

        # 2. transient: every 7th request answers 500 (12 times in all), every answer is slow
        proxy.doomed, proxy.fail_every, proxy.max_injected, proxy.delay_s = None, 7, 12, 0.01
        flaky = run_segpipe(f"s3://{bucket}/archive", f"s3://{bucket}/flaky", env=env, settings=settings)
        injected = proxy.injected
    assert flaky.returncode == 0, flaky.stderr[-2000:]
    assert injected == 12, injected
    got = snapshot(f"s3://{bucket}/flaky", opts)
    assert got["duplicates"] == 0 and {r[1] for r in got["images"]} == {"done"} and len(got["images"]) == 3
    ref = snapshot(f"s3://{bucket}/perm", opts)
    good = {r[0] for r in ref["images"] if r[1] == "done"}
    assert [r for r in got["regions"] if r[0] in good] == ref["regions"] and ref["regions"]

    # credentials never leak: not in stdout / stderr, not in any object the runs wrote
    for proc in (perm, flaky):
        assert KEY_ID not in proc.stdout + proc.stderr and SECRET not in proc.stdout + proc.stderr
    written = _all_text(s3, bucket, "perm") + _all_text(s3, bucket, "flaky")
    assert len(written) > 1000
    assert KEY_ID.encode() not in written and SECRET.encode() not in written
