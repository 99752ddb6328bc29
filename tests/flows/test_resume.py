"""Kill -9 a real `segpipe run` mid-run, rerun: the tables equal those of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segpipe import tables
from segpipe.lock import read_lock

SETTINGS = {"infer.model": "classical", "ingest.chunk": 128, "ingest.min_size": 128,
            "run.concurrency": 1, "run.retries": 0}


def _env(prefect_url: str, dask_address: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"SEGPIPE_{k.split('.')[0].upper()}__{k.split('.')[1].upper()}": str(v) for k, v in SETTINGS.items()})
    env.update(PREFECT_API_URL=prefect_url, SEGPIPE_RUN__CLUSTER=dask_address,
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def _snapshot(results: Path) -> dict:
    con = tables.open_results(str(results))
    regions = con.execute("select image_id, label, class, area_px, centroid_y, centroid_x, bbox_y0, bbox_x0, "
                          "bbox_y1, bbox_x1 from regions order by image_id, label").fetchall()
    images = con.execute("select image_id, status, n_regions, fingerprint, model, config_hash "
                         "from images_latest order by image_id").fetchall()
    dup = con.execute("select count(*) - count(distinct (image_id, label)) from regions").fetchone()[0]
    return {"regions": regions, "images": images, "duplicates": dup}


@pytest.mark.timeout(400)
def test_kill_and_resume(tmp_path, prefect_server, dask_client, make_image):
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(4):
        make_image(archive / f"img{i}.tif", side=384, seed=10 + i)
    killed = tmp_path / "killed"
    segpipe = str(Path(sys.executable).parent / "segpipe")
    proc = subprocess.Popen([segpipe, "run", str(archive), "--out", str(killed)],
                            env=_env(prefect_server, dask_client.scheduler.address),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (killed / "tables").exists():
                states = tables.image_states(str(killed))
                statuses = [s["status"] for s in states.values()]
                if "done" in statuses and "running" in statuses:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-500:]!r}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, nothing left behind
        proc.wait(30)
    before = tables.image_states(str(killed))
    assert "running" in {s["status"] for s in before.values()}
    assert read_lock(str(killed)) is not None  # the dead run's lock is still there
    half = _snapshot(killed)
    done_before = {i for i, s, *_ in half["images"] if s == "done"}
    assert {r[0] for r in half["regions"]} <= done_before  # nothing half-written is visible

    from flows import archive_run

    overrides = {**SETTINGS, "run.cluster": dask_client.scheduler.address}
    resumed = archive_run(str(archive), str(killed), overrides=overrides)
    assert resumed.skipped == len(done_before) and resumed.done == 4 - len(done_before)
    reference = tmp_path / "reference"
    full = archive_run(str(archive), str(reference), overrides=overrides)
    assert full.done == 4

    got, want = _snapshot(killed), _snapshot(reference)
    assert got["duplicates"] == 0 and want["duplicates"] == 0
    assert got["regions"] == want["regions"] and len(got["regions"]) > 0
    assert got["images"] == want["images"]
    assert all(s == "done" for _, s, *_ in got["images"])
    assert read_lock(str(killed)) is None  # released by the rerun
