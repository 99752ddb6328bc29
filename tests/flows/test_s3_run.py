"""An archive on S3 into results on S3 (moto server): the same flow, the S3 lock, reruns skip."""

from __future__ import annotations

import os

import pytest

from segpipe import tables
from segpipe.errors import ResultsLockedError
from segpipe.lock import ResultsLock

pytestmark = pytest.mark.usefixtures("prefect_server")

_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL_S3",
        "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def _set_env(env):
    import s3fs

    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_archive_to_s3_results(s3, dask_client, fast, make_image, tmp_path):
    # the session's workers may predate the moto server: give them its endpoint
    dask_client.run(_set_env, {k: os.environ[k] for k in _AWS if k in os.environ})
    bucket = s3.bucket("flows")
    for name, seed in (("a.tif", 1), ("sub/b.tif", 2)):
        local = make_image(tmp_path / name.replace("/", "_"), seed=seed)
        s3.fs.put_file(str(local), f"{bucket}/archive/{name}")
    source, results = f"s3://{bucket}/archive", f"s3://{bucket}/results"
    from flows import archive_run

    first = archive_run(source, results, overrides=fast)
    assert (first.done, first.failed) == (2, 0), first.failures
    con = tables.open_results(results)
    assert {r[0] for r in con.execute("select distinct image_id from regions").fetchall()} == {"a", "sub_b"}
    assert s3.fs.exists(f"{bucket}/results/images/a.ome.zarr/zarr.json")
    # the report is written to S3 too (its region files are read there, several at once)
    assert first.report and first.report.startswith("s3://"), first.report
    html = s3.fs.cat_file(first.report).decode()
    assert 'id="img-a"' in html and 'id="img-sub_b"' in html and "Regions per class" in html
    assert archive_run(source, results, overrides=fast).skipped == 2
    # a changed image is rebuilt in the staging folder and copied over the old one at its commit
    before = {r[0] for r in con.execute("select distinct run_id from regions where image_id = 'a'").fetchall()}
    s3.fs.put_file(str(make_image(tmp_path / "a2.tif", seed=5)), f"{bucket}/archive/a.tif")
    third = archive_run(source, results, overrides=fast)
    assert (third.done, third.skipped) == (1, 1), third.failures
    con = tables.open_results(results)
    assert con.execute("select distinct run_id from regions where image_id = 'a'").fetchall() == [(third.run_id,)]
    assert third.run_id not in before
    (timings,) = con.execute("select timings from images_latest where image_id = 'a'").fetchone()
    assert "publish.replace" in dict(timings)  # built aside, then copied in place
    n = third.regions
    import zarr

    from segpipe.io import zarr_store

    store = zarr_store(f"{results}/images/a.ome.zarr/labels/classical/0", s3.storage_options, read_only=True)
    labels = zarr.open_array(store=store, mode="r")[...]
    assert len(set(labels.ravel().tolist()) - {0}) == n > 0
    s3.fs.invalidate_cache()
    assert not s3.fs.find(f"{bucket}/results/images/.staging")  # the staging copies are gone
    with ResultsLock(results, owner="run-other", lease_s=30):
        with pytest.raises(ResultsLockedError, match="run-other"):
            archive_run(source, results, overrides=fast)
