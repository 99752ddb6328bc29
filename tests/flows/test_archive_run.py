"""The archive_run flow under a Prefect test server: incremental reruns, failures, the lock."""

from __future__ import annotations

import pytest

from segpipe import tables
from segpipe.errors import ResultsLockedError
from segpipe.lock import ResultsLock

pytestmark = pytest.mark.usefixtures("prefect_server")


def _run(archive, results, overrides, **kw):
    from flows import archive_run

    return archive_run(str(archive), str(results), overrides=overrides, **kw)


def _regions(results):
    con = tables.open_results(str(results))
    return con.execute("select image_id, label, area_px, centroid_y, centroid_x from regions "
                       "order by image_id, label").fetchall()


def test_incremental_runs(archive, tmp_path, fast, make_image):
    results = tmp_path / "results"
    first = _run(archive, results, fast)
    assert (first.done, first.skipped, first.failed, first.status) == (2, 0, 0, "done")
    assert first.regions > 0 and first.model == "classical"
    regions = _regions(results)
    assert {r[0] for r in regions} == {"a", "b"} and len(regions) == first.regions
    assert first.report and first.report.endswith(f"{first.run_id}.html")

    # nothing changed: nothing is processed, the skips are recorded, results identical
    second = _run(archive, results, fast)
    assert (second.done, second.skipped, second.failed) == (0, 2, 0)
    assert _regions(results) == regions
    con = tables.open_results(str(results))
    assert con.execute(f"select count(*) from images where run_id = '{second.run_id}' and status = 'skipped'"
                       ).fetchone()[0] == 2
    assert con.execute("select status from runs order by started_at").fetchall() == [("done",), ("done",)]

    # one new image: only it is processed
    make_image(archive / "c.tif", seed=3)
    third = _run(archive, results, fast)
    assert (third.done, third.skipped) == (1, 2)
    assert {r[0] for r in _regions(results)} == {"a", "b", "c"}

    # settings that change results: everything is redone
    fourth = _run(archive, results, {**fast, "ingest.chunk": 128})
    assert (fourth.done, fourth.skipped) == (3, 0)
    con = tables.open_results(str(results))
    # one visible regions file per image: the latest done run's
    assert con.execute("select count(distinct run_id) from regions").fetchone()[0] == 1
    assert con.execute("select distinct run_id from regions").fetchone()[0] == fourth.run_id


def test_bad_image_fails_alone(archive, tmp_path, fast):
    (archive / "broken.tif").write_bytes(b"II*\x00 truncated")
    results = tmp_path / "results"
    summary = _run(archive, results, fast)
    assert (summary.done, summary.failed, summary.status) == (2, 1, "partial")
    assert summary.failures[0][0] == "broken" and "\n" not in summary.failures[0][1]
    con = tables.open_results(str(results))
    rows = dict(con.execute("select image_id, status from images_latest").fetchall())
    assert rows == {"a": "done", "b": "done", "broken": "failed"}
    error = con.execute("select error from images_latest where image_id = 'broken'").fetchone()[0]
    assert error == summary.failures[0][1]
    assert con.execute("select n_failed, status from runs").fetchone() == (1, "partial")
    # a rerun retries the failed image only
    again = _run(archive, results, fast)
    assert (again.done, again.skipped, again.failed) == (0, 2, 1)


def test_second_run_finds_results_in_use(archive, tmp_path, fast):
    results = tmp_path / "results"
    with ResultsLock(str(results), owner="run-elsewhere", lease_s=30):
        with pytest.raises(ResultsLockedError, match="in use by run run-elsewhere"):
            _run(archive, results, fast)
    assert _run(archive, results, fast).done == 2  # free again afterwards


def test_config_error_before_any_work(archive, tmp_path, fast):
    from segpipe.errors import ConfigError

    results = tmp_path / "results"
    with pytest.raises(ConfigError, match="infer.batch"):
        _run(archive, results, {**fast, "infer.batch": 0})
    assert not results.exists()
