"""Results tables: schemas, atomic writes, visibility rules, queries, read-only DuckDB."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segpipe.errors import ConfigError, ImageNotFoundError, ResultsError, TableFileError
from segpipe.tables import (
    IMAGES_SCHEMA,
    REGIONS_SCHEMA,
    RUNS_SCHEMA,
    has_older_regions,
    image_states,
    init_results,
    latest_done,
    open_results,
    pack_run,
    prune_regions,
    run_query,
    write_image_row,
    write_regions,
    write_run_row,
)

T0 = datetime(2026, 1, 1, 2, 0, tzinfo=timezone.utc)

# --- the README's example queries (tested below in test_example_queries) --------------------

#: Nuclei per mm² of tissue, per slide (latest done run of each slide).
NUCLEI_PER_MM2 = """
SELECT i.image_id,
       count(*)                                      AS nuclei,
       round(i.tissue_area_um2 / 1e6, 4)             AS tissue_mm2,
       round(count(*) / (i.tissue_area_um2 / 1e6), 1) AS nuclei_per_mm2
FROM regions r JOIN images i USING (image_id, run_id)
WHERE r.class = 'nucleus'
GROUP BY i.image_id, i.tissue_area_um2
ORDER BY nuclei_per_mm2 DESC
"""

#: Area histogram per class, 25 µm² bins.
AREA_HISTOGRAM = """
SELECT class,
       floor(area_um2 / 25) * 25 AS area_um2_from,
       count(*)                  AS regions
FROM regions
GROUP BY ALL
ORDER BY class, area_um2_from
"""

#: Slides whose region count changed between their previous and their latest done run.
COUNT_CHANGED = """
WITH done AS (
  SELECT image_id, run_id, n_regions,
         lag(n_regions) OVER (PARTITION BY image_id ORDER BY updated_at)  AS previous_n,
         row_number()   OVER (PARTITION BY image_id ORDER BY updated_at DESC) AS newest
  FROM images WHERE status = 'done')
SELECT image_id, previous_n, n_regions, n_regions - previous_n AS change
FROM done
WHERE newest = 1 AND previous_n IS NOT NULL AND n_regions <> previous_n
ORDER BY abs(change) DESC, image_id
"""


def region_columns(
    n: int, n_channels: int = 2, seed: int = 0, classes: tuple[str, ...] = ("nucleus",)
) -> dict[str, Any]:
    """Columns shaped like ``segpipe.regions.finalize`` output."""
    rng = np.random.default_rng(seed)
    area = rng.integers(20, 200, n).astype(np.int64)
    y0 = rng.integers(0, 1000, n).astype(np.int64)
    x0 = rng.integers(0, 1000, n).astype(np.int64)
    return {
        "label": np.arange(1, n + 1, dtype=np.uint32),
        "class": np.array([classes[i % len(classes)] for i in range(n)], dtype=object),
        "area_px": area,
        "area_um2": area * 0.25,
        "centroid_y": y0 + 5.0,
        "centroid_x": x0 + 5.0,
        "bbox_y0": y0,
        "bbox_x0": x0,
        "bbox_y1": y0 + 10,
        "bbox_x1": x0 + 10,
        "mean_intensity": rng.random((n, n_channels)),
        "std_intensity": rng.random((n, n_channels)),
        "min_intensity": np.zeros((n, n_channels)),
        "max_intensity": np.ones((n, n_channels)),
        "orientation": rng.random(n),
        "eccentricity": rng.random(n),
        "major_axis_px": rng.random(n) * 10,
        "minor_axis_px": rng.random(n) * 5,
        "perimeter_px": rng.random(n) * 30,
    }


def image_row(image_id: str, run_id: str, status: str, k: int = 0, **extra: Any) -> dict[str, Any]:
    """A full images row; ``k`` orders rows in time."""
    row = {
        "image_id": image_id,
        "run_id": run_id,
        "status": status,
        "source_uri": f"/archive/{image_id}.svs",
        "fingerprint": f"fp-{image_id}",
        "image_uri": f"RESULTS/images/{image_id}.ome.zarr",
        "labels_uri": f"RESULTS/images/{image_id}.ome.zarr/labels/nuclei",
        "model": "nuclei",
        "model_sha256": "ab" * 32,
        "config_hash": "c0ffee",
        "mpp": 0.5,
        "height": 2000,
        "width": 1500,
        "n_channels": 3,
        "dtype": "uint8",
        "modality": "brightfield",
        "started_at": T0 + timedelta(hours=k),
        "updated_at": T0 + timedelta(hours=k, minutes=5 if status != "running" else 0),
    }
    if status in ("done", "failed"):
        row["finished_at"] = T0 + timedelta(hours=k, minutes=5)
        row["duration_s"] = 300.0
        row["timings"] = {"ingest": 10.0, "segment": 250.0, "publish": 40.0}
    row.update(extra)
    return row


def publish(
    results: str, image_id: str, run_id: str, n: int, k: int, so: dict | None = None, **extra: Any
) -> None:
    """What the pipeline does for one image: running row, regions, done row."""
    write_image_row(results, image_row(image_id, run_id, "running", k), storage_options=so)
    write_regions(results, image_id, run_id, region_columns(n, seed=k), storage_options=so)
    write_image_row(
        results, image_row(image_id, run_id, "done", k, n_regions=n, **extra), storage_options=so
    )


@pytest.fixture(params=["local", "s3"])
def results(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict | None]:
    """A results folder URL and its storage options, on local disk and on moto S3."""
    if request.param == "local":
        return str(tmp_path / "results"), None
    s3 = request.getfixturevalue("s3")
    return f"s3://{s3.bucket('res')}/results", s3.storage_options


def test_round_trip(results: tuple[str, dict | None]) -> None:
    url, so = results
    init_results(url, storage_options=so)
    publish(url, "slide-a", "run1", 5, 0, so)
    publish(url, "slide-b", "run1", 3, 0, so)
    write_run_row(url, {"run_id": "run1", "status": "done", "n_images": 2, "n_done": 2,
                        "config": {"chunk": 1024}, "started_at": T0, "finished_at": T0 + timedelta(hours=1),
                        "timings": {"segment": 500.0}}, storage_options=so)  # fmt: skip
    con = open_results(url, storage_options=so)
    assert con.execute("select count(*) from regions").fetchone()[0] == 8
    rows = con.execute(
        "select image_id, label, mean_intensity, area_um2 from regions where image_id = 'slide-a' order by label"
    ).fetchall()
    expected = region_columns(5, seed=0)
    assert [r[1] for r in rows] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r[2] for r in rows], expected["mean_intensity"])
    np.testing.assert_allclose([r[3] for r in rows], expected["area_um2"])
    assert con.execute("select count(*), min(status) from images").fetchone() == (2, "done")
    run = con.execute("select run_id, n_done, config, timings['segment'] from runs").fetchone()
    assert (
        run[0] == "run1"
        and run[1] == 2
        and json.loads(run[2]) == {"chunk": 1024}
        and run[3] == 500.0
    )
    types = dict(con.execute("select column_name, column_type from (describe regions)").fetchall())
    assert types["label"] == "UINTEGER" and types["mean_intensity"] == "DOUBLE[]"
    states = image_states(url, storage_options=so)
    assert set(states) == {"slide-a", "slide-b"}
    assert states["slide-a"]["status"] == "done" and states["slide-a"]["n_regions"] == 5
    assert states["slide-a"]["fingerprint"] == "fp-slide-a"


def test_schema_units_and_provenance(tmp_path: Path) -> None:
    url = str(tmp_path)
    path = write_regions(url, "img", "r1", region_columns(4))
    schema = pq.read_schema(path)
    assert schema.field("area_um2").metadata[b"unit"] == b"um2"
    assert schema.field("area_px").metadata[b"unit"] == b"px"
    assert schema.field("mean_intensity").type.value_type == pa.float64()
    assert schema.metadata[b"segpipe_table"] == b"regions"
    design_regions = {"image_id", "label", "class", "area_px", "area_um2", "centroid_y", "centroid_x",
                      "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "mean_intensity"}  # fmt: skip
    assert design_regions <= set(REGIONS_SCHEMA.names)
    provenance = {"segpipe_version", "model", "model_sha256", "config_hash", "fingerprint", "mpp",
                  "run_id", "started_at", "finished_at", "error", "timings", "source_uri", "status",
                  "labels_uri", "n_regions"}  # fmt: skip
    assert provenance <= set(IMAGES_SCHEMA.names)
    assert {"segpipe_version", "model", "model_sha256", "config_hash", "run_id", "started_at",
            "finished_at", "error", "timings"} <= set(RUNS_SCHEMA.names)  # fmt: skip
    img = pq.read_table(write_image_row(url, image_row("img", "r1", "done")))
    assert img.schema.field("mpp").metadata[b"unit"] == b"um/px"
    row = img.to_pylist()[0]
    import segpipe

    assert row["segpipe_version"] == segpipe.__version__
    assert row["model_sha256"] == "ab" * 32 and row["updated_at"].tzinfo is not None


def test_same_image_twice_one_row_per_region(results: tuple[str, dict | None]) -> None:
    url, so = results
    publish(url, "slide", "run1", 6, 0, so)
    publish(url, "slide", "run2", 6, 1, so)
    con = open_results(url, storage_options=so)
    assert con.execute("select count(*), count(distinct label), min(run_id), max(run_id) from regions").fetchone() == (
        6, 6, "run2", "run2")  # fmt: skip
    assert con.execute("select count(*) from images").fetchone()[0] == 2
    assert has_older_regions(url, "slide", "run2", storage_options=so)
    removed = prune_regions(url, "slide", "run2", storage_options=so)
    assert len(removed) == 1 and removed[0].endswith("regions/slide/run1.parquet")
    assert not has_older_regions(url, "slide", "run2", storage_options=so)
    assert not has_older_regions(url, "nope", "run2", storage_options=so)
    con = open_results(url, storage_options=so)
    assert con.execute("select count(*) from regions").fetchone()[0] == 6


def test_crash_exposes_no_rows(results: tuple[str, dict | None]) -> None:
    url, so = results
    write_image_row(url, image_row("slide", "run1", "running", 0), storage_options=so)
    write_regions(url, "slide", "run1", region_columns(7), storage_options=so)
    con = open_results(url, storage_options=so)
    assert con.execute("select count(*) from regions").fetchone()[0] == 0
    assert image_states(url, storage_options=so)["slide"]["status"] == "running"
    # a later crash of a re-run leaves the previous done rows visible, and only those
    publish(url, "other", "run1", 4, 0, so)
    write_image_row(url, image_row("other", "run2", "running", 1), storage_options=so)
    write_regions(url, "other", "run2", region_columns(9, seed=5), storage_options=so)
    con = open_results(url, storage_options=so)
    assert con.execute("select count(*), min(run_id) from regions").fetchone() == (4, "run1")


def test_unreadable_stale_file_is_never_read(tmp_path: Path) -> None:
    url = str(tmp_path)
    publish(url, "slide", "run2", 3, 1)
    stale = tmp_path / "tables" / "regions" / "slide" / "run1.parquet"
    stale.write_bytes(b"half-written garbage")
    con = open_results(url)
    assert con.execute("select count(*) from regions").fetchone()[0] == 3
    with pytest.raises(ResultsError, match="latest done run is 'run2'"):
        prune_regions(url, "slide", "run1")
    assert stale.exists()
    prune_regions(url, "slide", "run2")
    assert not stale.exists()
    with pytest.raises(ImageNotFoundError, match="nope"):
        prune_regions(url, "nope", "run2")


def test_failed_and_skipped_rows(tmp_path: Path) -> None:
    url = str(tmp_path)
    publish(url, "slide", "run1", 5, 0)
    write_image_row(url, image_row("slide", "run2", "failed", 1, error="ImageReadError: truncated"))
    write_image_row(url, image_row("slide", "run3", "skipped", 2))
    state = image_states(url)["slide"]
    assert state["status"] == "failed" and state["run_id"] == "run2"
    assert state["timings"] == {"ingest": 10.0, "segment": 250.0, "publish": 40.0}
    con = open_results(url)
    assert con.execute("select count(*), min(run_id) from regions").fetchone() == (5, "run1")
    assert con.execute("select status from images_latest").fetchone()[0] == "failed"
    assert (
        con.execute("select error from images where status = 'failed'")
        .fetchone()[0]
        .startswith("ImageReadError")
    )


def test_empty_results_have_typed_views(tmp_path: Path) -> None:
    url = str(tmp_path / "res")
    init_results(url)
    con = open_results(url)
    for view in ("regions", "images", "images_latest", "runs"):
        assert con.execute(f"select count(*) from {view}").fetchone()[0] == 0
    types = dict(con.execute("select column_name, column_type from (describe regions)").fetchall())
    assert types["area_um2"] == "DOUBLE" and types["mean_intensity"] == "DOUBLE[]"
    types = dict(con.execute("select column_name, column_type from (describe images)").fetchall())
    assert types["started_at"] == "TIMESTAMP WITH TIME ZONE" and types["n_regions"] == "BIGINT"


def test_image_without_regions_writes_a_typed_empty_file(tmp_path: Path) -> None:
    url = str(tmp_path)
    empty = {k: v[:0] for k, v in region_columns(3).items()}
    path = write_regions(url, "blank", "r1", empty)
    assert pq.read_table(path).num_rows == 0
    write_image_row(url, image_row("blank", "r1", "done", n_regions=0))
    assert open_results(url).execute("select count(*) from regions").fetchone()[0] == 0


def test_not_a_results_folder(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="not a segpipe results folder") as info:
        open_results(str(tmp_path / "missing"))
    assert "\n" not in str(info.value)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ResultsError):
        run_query(str(tmp_path / "plain"), "select 1")
    assert image_states(str(tmp_path / "missing")) == {}


def test_invalid_writes_are_refused(tmp_path: Path) -> None:
    url = str(tmp_path)
    with pytest.raises(ConfigError, match="unknown images column"):
        write_image_row(url, {**image_row("a", "r", "done"), "colour": "red"})
    with pytest.raises(ConfigError, match="status"):
        write_image_row(url, image_row("a", "r", "finished"))
    with pytest.raises(ConfigError, match="safe file name"):
        write_image_row(url, image_row("../evil", "r", "done"))
    cols = region_columns(3)
    with pytest.raises(ConfigError, match="missing"):
        write_regions(url, "a", "r", {k: v for k, v in cols.items() if k != "area_um2"})
    with pytest.raises(ConfigError, match="rows"):
        write_regions(url, "a", "r", {**cols, "area_px": cols["area_px"][:2]})
    with pytest.warns(UserWarning, match="solidity"):
        write_regions(url, "a", "r", {**cols, "solidity": np.ones(3)})
    assert not list(tmp_path.rglob("*.tmp"))


def test_area_without_pixel_size_is_null_for_sql(tmp_path: Path) -> None:
    """An image without µm/px has no area in µm²: null, which SQL aggregates skip (NaN would
    make avg() over a mixed archive NaN)."""
    url = str(tmp_path / "res")
    publish(url, "with-mpp", "run1", 4, 0)
    write_image_row(url, image_row("no-mpp", "run1", "running", 1))
    cols = region_columns(3, seed=1)
    write_regions(url, "no-mpp", "run1", {**cols, "area_um2": np.full(3, np.nan)})
    write_image_row(url, image_row("no-mpp", "run1", "done", 1, n_regions=3))
    con = open_results(url)
    nulls, mean, count = con.execute(
        "select count(*) filter (where area_um2 is null), avg(area_um2), count(area_um2) from regions"
    ).fetchone()
    assert (nulls, count) == (3, 4) and mean == pytest.approx(float(np.mean(region_columns(4)["area_um2"])))


def test_query_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(tmp_path / "res")
    publish(url, "slide", "run1", 4, 0)
    sql = "select label, area_um2, mean_intensity from regions order by label"
    table = run_query(url, sql, fmt="csv")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "label,area_um2,mean_intensity" and len(out) == 5 and table.num_rows == 4
    run_query(url, sql, fmt="json")
    data = json.loads(capsys.readouterr().out)
    assert [d["label"] for d in data] == [1, 2, 3, 4] and len(data[0]["mean_intensity"]) == 2
    run_query(url, "select * from images", fmt="json")
    assert json.loads(capsys.readouterr().out)[0]["started_at"].startswith("2026-01-01T02:00:00")
    run_query(url, sql, fmt="table")
    shown = capsys.readouterr().out
    assert "area_um2" in shown and "4 rows" in shown
    out_pq = tmp_path / "answer.parquet"
    run_query(url, sql, fmt="parquet", output=str(out_pq))
    assert pq.read_table(out_pq).column("label").to_pylist() == [1, 2, 3, 4]
    out_txt = tmp_path / "answer.txt"
    run_query(url, sql, fmt="table", output=str(out_txt))
    assert "mean_intensity" in out_txt.read_text()
    with pytest.raises(ConfigError, match="needs --output"):
        run_query(url, sql, fmt="parquet")
    with pytest.raises(ConfigError, match="inside"):
        run_query(url, sql, fmt="csv", output=f"{url}/tables/regions/x.parquet")
    # nor through "..", a symbolic link, or into an image store (session 9: each broke the folder)
    (Path(url) / "elsewhere").mkdir()
    (Path(url) / "elsewhere" / "link").symlink_to(Path(url) / "tables")
    for sneaky in (f"{url}/elsewhere/../tables/runs/x.parquet", f"{url}/elsewhere/link/runs/x.parquet",
                   f"{url}/images/a.ome.zarr/zarr.json"):
        with pytest.raises(ConfigError, match="inside"):
            run_query(url, sql, fmt="csv", output=sneaky)
    # a DuckDB HUGEINT (sum of integers) or DECIMAL is a JSON number
    run_query(url, "select sum(label) as s, 1.5 as d from regions", fmt="json")
    assert json.loads(capsys.readouterr().out) == [{"s": 10, "d": 1.5}]
    with pytest.raises(ConfigError, match="not one of"):
        run_query(url, sql, fmt="xlsx")  # type: ignore[arg-type]


def test_bad_sql_is_one_line_error(tmp_path: Path) -> None:
    url = str(tmp_path)
    init_results(url)
    with pytest.raises(ConfigError, match="query failed: .*nowhere.*the views are regions") as info:
        run_query(url, "select nonsense from nowhere", fmt="csv")
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, duckdb.Error)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_connection_cannot_modify_results(tmp_path: Path) -> None:
    url = str(tmp_path / "res")
    publish(url, "slide", "run1", 4, 0)
    before = _snapshot(Path(url))
    con = open_results(url)
    target = f"{url}/tables/regions/slide/run9.parquet"
    attempts = [
        f"COPY (select * from regions) TO '{target}' (FORMAT parquet)",
        f"COPY regions TO '{url}/tables/images/slide/run9.parquet'",
        f"ATTACH '{url}/tables/evil.duckdb' AS evil",
        f"select * from read_parquet('{url}/tables/regions/*/*.parquet')",
        "SET enable_external_access = true",
        "INSTALL httpfs",
    ]
    for sql in attempts:
        with pytest.raises(duckdb.Error):
            con.execute(sql)
    # in-memory tables are allowed and change nothing on disk
    con.execute("CREATE TABLE scratch AS SELECT * FROM regions")
    assert con.execute("select count(*) from scratch").fetchone()[0] == 4
    con.close()
    assert _snapshot(Path(url)) == before
    with pytest.raises(ConfigError, match="query failed"):
        run_query(url, f"COPY (select 1) TO '{url}/tables/x.csv'", fmt="csv")
    assert _snapshot(Path(url)) == before


def test_example_queries(tmp_path: Path) -> None:
    url = str(tmp_path / "res")
    # run 1: three slides; run 2: slide-b re-segmented with a different count, slide-c crashed
    publish(url, "slide-a", "run1", 30, 0, tissue_area_um2=2.0e6)
    publish(url, "slide-b", "run1", 20, 0, tissue_area_um2=0.5e6)
    publish(url, "slide-c", "run1", 10, 0, tissue_area_um2=1.0e6)
    publish(url, "slide-b", "run2", 24, 1, tissue_area_um2=0.5e6)
    write_image_row(url, image_row("slide-c", "run2", "running", 1))
    write_image_row(url, image_row("slide-a", "run2", "skipped", 1))
    con = open_results(url)
    density = con.execute(NUCLEI_PER_MM2).fetchall()
    assert [(r[0], r[1], r[3]) for r in density] == [
        ("slide-b", 24, 48.0), ("slide-a", 30, 15.0), ("slide-c", 10, 10.0)]  # fmt: skip
    hist = con.execute(AREA_HISTOGRAM).fetchall()
    assert sum(r[2] for r in hist) == 64 and {r[0] for r in hist} == {"nucleus"}
    assert all(r[1] % 25 == 0 for r in hist)
    assert con.execute(COUNT_CHANGED).fetchall() == [("slide-b", 20, 24, 4)]


def test_histogram_per_class_with_two_classes(tmp_path: Path) -> None:
    url = str(tmp_path)
    write_regions(url, "x", "r1", region_columns(10, classes=("tumor", "stroma")))
    write_image_row(url, image_row("x", "r1", "done", n_regions=10))
    hist = open_results(url).execute(AREA_HISTOGRAM).fetchall()
    assert {r[0] for r in hist} == {"tumor", "stroma"} and sum(r[2] for r in hist) == 10


def test_local_writes_are_atomic_renames(tmp_path: Path) -> None:
    url = str(tmp_path)
    path = write_regions(url, "img", "r1", region_columns(3))
    inode = os.stat(path).st_ino
    write_regions(url, "img", "r1", region_columns(5))  # replaced by rename: a new inode
    assert os.stat(path).st_ino != inode and pq.read_table(path).num_rows == 5
    assert sorted(p.name for p in Path(path).parent.iterdir()) == ["r1.parquet"]


def test_engine_columns_round_trip(tmp_path: Path) -> None:
    """The engine's real ``regions_table`` output is stored without loss or warnings."""
    regions = pytest.importorskip("segpipe.regions")
    labels = np.zeros((40, 50), np.uint32)
    labels[2:10, 3:12] = 4
    labels[20:35, 30:45] = 9
    image = np.stack([labels * 2.0, labels * 3.0]).astype(np.uint16)
    columns = regions.regions_table(labels, image, mpp=0.5, image_id="")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_regions(str(tmp_path), "img", "r1", columns)
    write_image_row(str(tmp_path), image_row("img", "r1", "done", n_regions=2))
    rows = (
        open_results(str(tmp_path))
        .execute(
            "select label, area_px, area_um2, mean_intensity, bbox_y1 from regions order by label"
        )
        .fetchall()
    )
    assert rows == [(4, 72, 18.0, [8.0, 12.0], 10), (9, 225, 56.25, [18.0, 27.0], 35)]


@settings(max_examples=20, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]), st.sampled_from(["running", "done", "failed", "skipped"])
        ),
        min_size=1,
        max_size=6,
    )
)
def test_visibility_rule_property(events: list[tuple[str, str]]) -> None:
    """Whatever happened, ``regions`` holds exactly each image's latest done run."""
    import tempfile

    with tempfile.TemporaryDirectory() as url:
        for k, (image_id, status) in enumerate(events):
            run_id = f"r{k}"
            if status in ("running", "done"):  # a crash leaves regions behind a running row
                write_regions(url, image_id, run_id, region_columns(k + 1, seed=k))
            write_image_row(url, image_row(image_id, run_id, status, k, n_regions=k + 1))
        latest_done = {i: k for k, (i, s) in enumerate(events) if s == "done"}
        latest_state = {i: (k, s) for k, (i, s) in enumerate(events) if s != "skipped"}
        if not Path(url, "tables").exists():
            return
        con = open_results(url)
        got = dict(con.execute("select image_id, count(*) from regions group by 1").fetchall())
        assert got == {i: k + 1 for i, k in latest_done.items()}
        runs = dict(con.execute("select image_id, min(run_id) from regions group by 1").fetchall())
        assert runs == {i: f"r{k}" for i, k in latest_done.items()}
        states = image_states(url)
        assert {i: (s["run_id"], s["status"]) for i, s in states.items()} == {
            i: (f"r{k}", s) for i, (k, s) in latest_state.items()
        }


def test_files_from_an_older_schema_still_read(tmp_path: Path) -> None:
    """A row file missing newer columns (or with retired ones) reads with nulls."""
    folder = tmp_path / "tables" / "images" / "old"
    folder.mkdir(parents=True)
    old = pa.table({"image_id": ["old"], "run_id": ["r0"], "status": ["done"], "retired": [1],
                    "updated_at": pa.array([T0], pa.timestamp("ms", tz="UTC"))})  # fmt: skip
    pq.write_table(old, folder / "r0.parquet")
    write_regions(str(tmp_path), "old", "r0", region_columns(2))
    con = open_results(str(tmp_path))
    assert con.execute("select image_id, model, n_regions from images").fetchall() == [
        ("old", None, None)
    ]
    assert con.execute("select count(*) from regions").fetchone()[0] == 2
    assert image_states(str(tmp_path))["old"]["status"] == "done"


# --- a bad file under RESULTS/tables: one line naming it --------------------------------------


def _damage(path: Path, how: str) -> None:
    """Spoil a table file as a user or another tool might."""
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":  # a half-copied file: its footer is gone
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "text":
        path.write_text("image_id,run_id\nslide,run1\n")
    elif how == "foreign":  # another tool's Parquet file
        pq.write_table(pa.table({"foo": [1, 2]}), path)
    elif how == "wrong_type":  # a segpipe file with a column of the wrong type
        table = pq.read_table(path)
        name = "area_px" if "area_px" in table.column_names else "n_regions"
        table = table.drop_columns([name]).append_column(name, pa.array(["many"] * table.num_rows))
        pq.write_table(table, path)


DAMAGES = {
    "empty": "empty file (0 bytes), not a Parquet file",
    "truncated": "not a Parquet file (truncated or corrupt)",
    "text": "not a Parquet file (truncated or corrupt)",
    "foreign": "not a segpipe {table} table file (no column",
    "wrong_type": "not a segpipe {table} table file (column {column} cannot be read as int64",
}


@pytest.mark.parametrize(
    ("table", "how"),
    # not ("regions", "foreign"): a regions file is scanned lazily, its missing columns as nulls
    [(t, h) for t in ("images", "runs", "regions") for h in DAMAGES if (t, h) != ("regions", "foreign")],
)
def test_bad_table_file_is_named_in_one_line(tmp_path: Path, table: str, how: str) -> None:
    """An empty, truncated, non-Parquet or foreign file where segpipe keeps a table file: the
    query (and, for the images table, planning a rerun) fails with one line naming the file,
    which stays where it is (nothing is lost). Found only after the read failed."""
    url = str(tmp_path / "res")
    publish(url, "slide-a", "run1", 5, 0)
    publish(url, "slide-b", "run1", 3, 0)
    write_run_row(url, {"run_id": "run1", "status": "done", "started_at": T0, "n_regions": 8})
    bad = tmp_path / "res" / "tables" / {"images": "images/slide-b/run1.parquet", "runs": "runs/run1.parquet",
                                         "regions": "regions/slide-b/run1.parquet"}[table]  # fmt: skip
    _damage(bad, how)
    before = _snapshot(tmp_path / "res")
    expected = DAMAGES[how].format(table=table, column="area_px" if table == "regions" else "n_regions")
    with pytest.raises(TableFileError) as info:
        run_query(url, "select count(*), sum(area_px) from regions", fmt="csv")
    message = str(info.value)
    assert message.startswith(f"{bad}: {expected}"), message
    assert "\n" not in message and isinstance(info.value, ResultsError)
    if table == "images":
        for reader in (image_states, latest_done, open_results):
            with pytest.raises(TableFileError, match=f"^{bad}: "):
                reader(url)
    assert _snapshot(tmp_path / "res") == before


def test_bad_regions_file_on_s3_is_named(s3: Any) -> None:
    from segpipe.tables import read_errors

    url, so = f"s3://{s3.bucket('bad')}/results", s3.storage_options
    publish(url, "slide", "run1", 4, 0, so)
    import fsspec

    fs = fsspec.filesystem("s3", **so)
    path = f"{url[len('s3://'):]}/tables/regions/slide/run1.parquet"
    fs.pipe(path, fs.cat(path)[:100])
    con = open_results(url, storage_options=so)
    with pytest.raises(TableFileError, match=rf"^{url}/tables/regions/slide/run1.parquet: not a Parquet file"):
        with read_errors(url, storage_options=so):
            con.sql("select * from regions").fetchall()
    with pytest.raises(duckdb.CatalogException):  # other errors stay as they were
        with read_errors(url, storage_options=so):
            con.sql("select nonsense from nowhere").fetchall()


def test_files_segpipe_does_not_write_are_ignored_with_a_warning(tmp_path: Path) -> None:
    """Files whose name or place segpipe never gives a table file (a Finder copy, another
    tool's summary, a text file named .parquet, a nested folder) are not read: their rows
    would be duplicates or foreign. A warning names one."""
    url = str(tmp_path)
    publish(url, "slide", "run1", 4, 0)
    write_run_row(url, {"run_id": "run1", "status": "done", "started_at": T0})
    images, runs = tmp_path / "tables" / "images", tmp_path / "tables" / "runs"
    (images / "slide" / "run1 (1).parquet").write_bytes((images / "slide" / "run1.parquet").read_bytes())
    pq.write_table(pa.table({"image_id": ["other"], "status": ["done"]}), images / "summary.parquet")
    (runs / "old" / "x").mkdir(parents=True)
    (runs / "old" / "x" / "run0.parquet").write_text("not parquet")
    (runs / "#draft.parquet").write_text("not parquet")
    with pytest.warns(UserWarning, match="ignoring 2 file.*segpipe does not write"):
        con = open_results(url)
    assert con.execute("select count(*) from images").fetchone()[0] == 1  # not the copy, nor "other"
    assert con.execute("select count(*) from runs").fetchone()[0] == 1
    assert con.execute("select count(*) from regions").fetchone()[0] == 4
    with pytest.warns(UserWarning, match=r"ignoring 2 file.*tables/images"):
        assert list(image_states(url)) == ["slide"]


# --- packing a finished run's files (segpipe.tables.pack_run) ---------------------------------


def _table_files(url: str) -> list[str]:
    root = Path(url, "tables")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def _everything(url: str, so: dict | None = None) -> tuple[Any, ...]:
    """What a user sees: regions, images and states."""
    con = open_results(url, storage_options=so)
    regions = con.execute("select image_id, run_id, label, area_px from regions order by all").fetchall()
    images = con.execute("select image_id, run_id, status, n_regions from images order by all").fetchall()
    states = {k: (v["run_id"], v["status"]) for k, v in image_states(url, storage_options=so).items()}
    return regions, images, states


def test_pack_run_keeps_every_row_once(results: tuple[str, dict | None]) -> None:
    url, so = results
    init_results(url, storage_options=so)
    for k, image_id in enumerate(["a", "b", "c"]):
        publish(url, image_id, "run1", 3 + k, k, so)
    write_image_row(url, image_row("d", "run1", "failed", 4, error="x.tif: truncated"), storage_options=so)
    before = _everything(url, so)
    summary = pack_run(url, "run1", ["a", "b", "c", "d"], storage_options=so)
    assert (summary.images, summary.regions) == (4, 3)
    assert _everything(url, so) == before
    if so is None:  # the images' folders are gone: a query opens one file per run
        assert _table_files(url) == ["images/_packed/run1.parquet", "regions/_packed/run1.parquet"]
    # a later run redoes b: its own file is visible, run1's rows of b are not
    publish(url, "b", "run2", 7, 10, so)
    regions, images, states = _everything(url, so)
    assert sorted({(i, r) for i, r, *_ in regions}) == [("a", "run1"), ("b", "run2"), ("c", "run1")]
    assert len(regions) == 3 + 7 + 5 and len(images) == 5 and states["b"] == ("run2", "done")


def test_a_pack_stopped_half_way_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Killed after the packed files were written, before the images' files were removed:
    every row is in two places, and is read once."""
    import shutil

    url = str(tmp_path / "results")
    for k, image_id in enumerate(["a", "b"]):
        publish(url, image_id, "run1", 2 + k, k)
    before = _everything(url)
    copy = tmp_path / "copy"
    shutil.copytree(Path(url, "tables"), copy)
    pack_run(url, "run1", ["a", "b"])
    shutil.copytree(copy, Path(url, "tables"), dirs_exist_ok=True)  # the removed files are back
    assert len(_table_files(url)) == 6
    assert _everything(url) == before
    pack_run(url, "run1", ["a", "b"])  # the next pack of the run finishes the job
    assert _everything(url) == before and len(_table_files(url)) == 2
    # stopped after removing a's files but not b's, then packed again: b's rows once
    shutil.copytree(copy / "images" / "b", Path(url, "tables", "images", "b"))
    shutil.copytree(copy / "regions" / "b", Path(url, "tables", "regions", "b"))
    assert _everything(url) == before
    pack_run(url, "run1", ["a", "b"])
    assert _everything(url) == before and len(_table_files(url)) == 2


def test_packed_regions_of_redone_images_are_vacuumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segpipe.tables import _pack

    url = str(tmp_path / "results")
    ids = ["a", "b", "c", "d"]
    for k, image_id in enumerate(ids):
        publish(url, image_id, "run1", 2, k)
    pack_run(url, "run1", ids)
    for run, redo in (("run2", ["a"]), ("run3", ["b", "c"]), ("run4", ["d", "x"])):
        for image_id in redo:
            publish(url, image_id, run, 5, 10 + len(run))
        summary = pack_run(url, run, redo)
        before = _everything(url)
        held = pq.read_table(tmp_path / "results/tables/regions/_packed/run1.parquet") if run != "run4" else None
        if run == "run2":  # 3 of run1's 4 images still visible: kept as it is
            assert summary.vacuumed == 0 and held is not None and held.num_rows == 8
        if run == "run3":  # 1 of 4: rewritten with that image's rows only
            assert summary.vacuumed == 1 and held is not None and set(held.column("image_id").to_pylist()) == {"d"}
        assert _everything(url) == before
    assert not (tmp_path / "results/tables/regions/_packed/run1.parquet").exists()  # none visible: removed
    # regions files of whole slides (larger than PACK_MAX_BYTES) stay on their own
    monkeypatch.setattr(_pack, "PACK_MAX_BYTES", 0)
    publish(url, "e", "run5", 3, 20)
    publish(url, "f", "run5", 3, 21)
    assert pack_run(url, "run5", ["e", "f"]).regions == 0
    assert {"regions/e/run5.parquet", "regions/f/run5.parquet", "images/_packed/run5.parquet"} <= set(
        _table_files(url))


@settings(max_examples=25, deadline=None)
@given(
    runs=st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from("abc"), st.sampled_from(["running", "done", "failed"]), min_size=1),
            st.sampled_from(["none", "pack", "stopped", "partly", "partly-repacked"]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_packing_property(runs: list[tuple[dict[str, str], str]]) -> None:
    """Whatever ran, crashed, was packed, stopped half-way through a pack (all of the run's
    files, or only some, left in place), or packed again after that, the tables read the same
    as without any packing."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as plain, tempfile.TemporaryDirectory() as packed:
        for k, (statuses, pack) in enumerate(runs):
            run_id = f"r{k}"
            for url in (plain, packed):
                for image_id, status in sorted(statuses.items()):
                    if status in ("running", "done"):  # a crash leaves regions behind a running row
                        write_regions(url, image_id, run_id, region_columns(k + 1, seed=k))
                    write_image_row(url, image_row(image_id, run_id, status, k, n_regions=k + 1))
            if pack == "none":
                continue
            saved = Path(packed, "saved")
            shutil.copytree(Path(packed, "tables"), saved)
            pack_run(packed, run_id, sorted(statuses))
            if pack == "stopped":
                shutil.copytree(saved, Path(packed, "tables"), dirs_exist_ok=True)
            if pack.startswith("partly"):  # the first image's files were removed, not the others'
                for left in sorted(statuses)[1:]:
                    for table in ("images", "regions"):
                        if Path(saved, table, left).exists():
                            shutil.copytree(Path(saved, table, left), Path(packed, "tables", table, left),
                                            dirs_exist_ok=True)
            if pack == "partly-repacked":
                pack_run(packed, run_id, sorted(statuses))
            shutil.rmtree(saved)
        assert _everything(packed) == _everything(plain)
