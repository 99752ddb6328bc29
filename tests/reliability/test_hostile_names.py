"""Hostile archive keys stay inside RESULTS with unique ids; ``segpipe query`` cannot write.

S3 keys may hold ``..``, a leading ``/`` (``archive//x``), unicode, 200+ characters, and
names that differ only by case; one ``segpipe run s3://… --out LOCAL`` over such an
archive must put every output under RESULTS (the whole temporary folder is walked after
the run) with one unique, safe image id per key.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import nuclei_tif, snapshot

from segpipe import tables

pytestmark = pytest.mark.timeout(300)

HOSTILE = [
    "../../etc/x.tif",
    "../../../../../../tmp/escape.tif",
    "/abs.tif",
    "sub/../../up.tif",
    "Case.tif",
    "case.tif",
    "CASE.TIF",
    "ñúcleo é 日本.tif",
    "x" * 200 + ".tif",
    "-rf --out.tif",
    "a b;$(touch pwn).tif",
]


def _files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")}


def test_hostile_keys_stay_inside_results(s3, tmp_path, run_segpipe):
    bucket = s3.bucket("hostile")
    image = nuclei_tif(tmp_path / "src.tif", side=128, seed=5).read_bytes()
    keys = [f"{bucket}/archive/{name}" for name in HOSTILE]
    for key in keys:
        s3.fs.pipe_file(key, image)
    s3.fs.invalidate_cache()
    stored = sorted(s3.fs.find(f"{bucket}/archive"))
    assert len(stored) == len(HOSTILE), stored  # S3 kept every key as written

    work = tmp_path / "work"
    results = work / "deep" / "results"
    work.mkdir()
    outside_before = _files(tmp_path)
    proc = run_segpipe(f"s3://{bucket}/archive", results, env={"AWS_ENDPOINT_URL_S3": s3.endpoint_url})
    assert proc.returncode == 0, proc.stderr[-2000:]

    created = _files(tmp_path) - outside_before
    ancestors = {str(p) for p in results.parents}  # mkdir -p of RESULTS itself
    escaped = [p for p in created if not p.startswith(str(results)) and p not in ancestors]
    assert not escaped, escaped
    assert not Path("/etc/x.tif").exists() and not Path("/tmp/escape.tif").exists()
    assert not list(Path("/").glob("up*.tif")) and not (Path.cwd() / "pwn").exists()

    states = tables.image_states(str(results))
    assert len(states) == len(HOSTILE), (stored, sorted((s["image_id"], s["source_uri"]) for s in states.values()))  # one image per key
    assert {s["status"] for s in states.values()} == {"done"}
    assert sorted(s["source_uri"] for s in states.values()) == sorted(f"s3://{k}" for k in stored)
    for image_id in states:
        assert re.fullmatch(r"[a-z0-9._-]{1,96}", image_id) and ".." not in image_id, image_id
        assert (results / "images" / f"{image_id}.ome.zarr").is_dir()
    assert len({i.lower() for i in states}) == len(states)  # unique even on case-insensitive disks
    snap = snapshot(results)
    assert snap["duplicates"] == 0 and {r[0] for r in snap["regions"]} == set(states)

    # segpipe query opens the results read-only: SQL cannot write, RESULTS is unchanged
    before = {p: Path(p).read_bytes() for p in _files(results) if Path(p).is_file()}
    segpipe = str(Path(sys.executable).parent / "segpipe")
    target = results / "tables" / "regions" / "evil.parquet"
    attempts = [
        f"copy (select * from regions) to '{target}'",
        f"copy (select 1) to '{results}/stolen.csv'",
        f"attach '{results}/db.duckdb' as x",
        "select * from read_text('/etc/hostname')",
        "set enable_external_access = true",
    ]
    for sql in attempts:
        q = subprocess.run([segpipe, "query", str(results), sql], capture_output=True, text=True, timeout=120)
        assert q.returncode != 0, (sql, q.stdout[-500:])
        assert "Traceback" not in q.stderr, q.stderr[-2000:]
    ok = subprocess.run([segpipe, "query", str(results), "select count(*) as n from regions", "-f", "csv"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and str(len(snap["regions"])) in ok.stdout
    after = {p: Path(p).read_bytes() for p in _files(results) if Path(p).is_file()}
    assert after == before
    assert not os.path.exists(f"{results}/stolen.csv")
