"""The per-image pipeline without Prefect: stages, failure isolation, visibility, planning."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from segpipe import tables
from segpipe.config import config_hash, load_config
from segpipe.errors import ImageReadError
from segpipe.pipeline import (
    ArchiveItem,
    ModelRef,
    discover_items,
    image_url,
    is_transient,
    new_run_id,
    one_line,
    plan_run,
    process_image,
    resolve_model,
)

OVERRIDES = {"infer.model": "classical", "ingest.chunk": 256, "ingest.min_size": 128}


def blobs(path, side=400, seed=0, n=12):
    """A grey image with ``n`` bright discs (what the classical model finds)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    img = np.full((side, side), 20, np.float32)
    for cy, cx in rng.integers(15, side - 15, (n, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(25, 80)] = 170
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    tifffile.imwrite(path, img)
    return path


@pytest.fixture
def cfg():
    return load_config(None, OVERRIDES)


@pytest.fixture
def archive(tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    blobs(folder / "a.tif", seed=1)
    blobs(folder / "b.tif", seed=2)
    (folder / "broken.tif").write_bytes(b"II*\x00 this is not a tiff")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _states(results):
    return tables.image_states(str(results))


def test_discover_items_ids_and_fingerprints(archive, cfg):
    items = discover_items(str(archive), cfg)
    assert [i.image_id for i in items] == ["a", "b", "broken"]
    assert all(i.fingerprint for i in items)
    only = discover_items(str(archive), load_config(None, {**OVERRIDES, "run.exclude": ["broken*"]}))
    assert [i.image_id for i in only] == ["a", "b"]


def test_process_image_done(archive, tmp_path, cfg):
    results = str(tmp_path / "results")
    tables.init_results(results)
    item = discover_items(str(archive), cfg)[0]
    ticks = []
    out = process_image(item, item.image_id, results, resolve_model("classical"), cfg, None, "run-1",
                        progress=lambda i, d, t: ticks.append((i, d, t)))
    assert out.status == "done" and out.error is None and out.n_regions > 0
    assert ticks and ticks[-1][1] == ticks[-1][2] and ticks[0][0] == "a"
    state = _states(results)["a"]
    assert state["status"] == "done" and state["run_id"] == "run-1"
    assert state["fingerprint"] == item.fingerprint and state["config_hash"] == config_hash(cfg)
    assert state["model"] == "classical" and state["labels_uri"].startswith(image_url(results, "a"))
    con = tables.open_results(results)
    n, ids = con.execute("select count(*), count(distinct label) from regions where image_id = 'a'").fetchone()
    assert n == out.n_regions == ids
    assert os.path.isdir(os.path.join(results, "images", "a.ome.zarr", "labels"))


def test_bad_image_fails_alone_with_one_line_error(archive, tmp_path, cfg):
    results = str(tmp_path / "results")
    tables.init_results(results)
    items = {i.image_id: i for i in discover_items(str(archive), cfg)}
    bad = process_image(items["broken"], "broken", results, ModelRef("classical"), cfg, None, "run-1")
    good = process_image(items["b"], "b", results, ModelRef("classical"), cfg, None, "run-1")
    assert bad.status == "failed" and "\n" not in bad.error and "broken" in bad.error
    assert good.status == "done"
    states = _states(results)
    assert states["broken"]["status"] == "failed" and states["broken"]["error"] == bad.error
    assert states["b"]["status"] == "done"


def test_crash_before_commit_exposes_nothing(archive, tmp_path, cfg):
    """A process dying between segmentation and the done row leaves a 'running' row and no regions."""
    results = str(tmp_path / "results")
    tables.init_results(results)
    item = discover_items(str(archive), cfg)[0]

    class Crash(BaseException):
        pass

    def runner(stage, thunk):
        if stage == "publish":
            # the region file is written, then the process "dies" before the done row
            cols = {k: [0] for k in ("label", "area_px", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")}
            cols.update({"class": ["object"], "area_um2": [np.nan], "centroid_y": [0.0], "centroid_x": [0.0]})
            tables.write_regions(results, "a", "run-1", cols)
            raise Crash()
        return thunk()

    with pytest.raises(Crash):
        process_image(item, "a", results, ModelRef("classical"), cfg, None, "run-1", stage_runner=runner)
    assert _states(results)["a"]["status"] == "running"
    assert tables.open_results(results).execute("select count(*) from regions").fetchone()[0] == 0
    # the rerun plans it again and commits it
    to_run, to_skip = plan_run([item], _states(results), ModelRef("classical"), cfg)
    assert to_run == [item] and not to_skip
    assert process_image(item, "a", results, ModelRef("classical"), cfg, None, "run-2").status == "done"
    assert tables.open_results(results).execute("select count(distinct run_id) from regions").fetchone()[0] == 1


def _labels(results, image_id, name="classical"):
    import zarr

    return np.asarray(zarr.open_group(f"{image_url(results, image_id)}/labels/{name}", mode="r")["0"][...])


def _corrupt_tile_tiff(path):
    """A tiled TIFF whose 6th tile holds noise: it opens, then fails when that tile is read."""
    tifffile.imwrite(path, np.full((256, 256), 20, np.uint8), tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = int(tif.pages[0].dataoffsets[5]), int(tif.pages[0].databytecounts[5])
    raw = bytearray(path.read_bytes())
    raw[offset: offset + count] = np.random.default_rng(0).integers(0, 256, count, np.uint8).tobytes()
    path.write_bytes(bytes(raw))


def _first_run(archive, results, cfg):
    tables.init_results(results)
    item = discover_items(str(archive), cfg)[0]
    assert process_image(item, "a", results, ModelRef("classical"), cfg, None, "run-1").status == "done"
    con = tables.open_results(results)
    before = con.execute("select * exclude (run_id) from regions order by label").fetchall()
    return before, _labels(results, "a")


def _visible(results):
    con = tables.open_results(results)
    return (con.execute("select * exclude (run_id) from regions order by label").fetchall(),
            con.execute("select distinct run_id from regions").fetchall())


def test_failed_rerun_keeps_the_last_done_outputs(archive, tmp_path, cfg):
    """The source is replaced by a file that fails half-way through its ingest: the image fails,
    and the earlier run's regions, image and labels stay visible and unchanged."""
    results = str(tmp_path / "results")
    before, labels = _first_run(archive, results, cfg)
    _corrupt_tile_tiff(archive / "a.tif")
    item = discover_items(str(archive), cfg)[0]
    out = process_image(item, "a", results, ModelRef("classical"), cfg, None, "run-2")
    assert out.status == "failed" and "a.tif" in out.error
    assert _visible(results) == (before, [("run-1",)])
    np.testing.assert_array_equal(_labels(results, "a"), labels)
    from segpipe.ingest import read_meta
    from segpipe.labels import label_names

    assert read_meta(image_url(results, "a")).shape == (400, 400)  # the old image, whole
    assert label_names(image_url(results, "a")) == ["classical"]
    assert not list((tmp_path / "results" / "images" / ".staging").rglob("*.ome.zarr"))


class Killed(BaseException):
    """The process dying at this point (no handler below the test catches it)."""


def _done_then_changed(archive, tmp_path, cfg):
    """Run 1 done on image ``a``, whose source then changes: (results, visible rows, labels, item)."""
    results = str(tmp_path / "results")
    before, labels = _first_run(archive, results, cfg)
    blobs(archive / "a.tif", side=320, seed=7, n=9)
    return results, before, labels, discover_items(str(archive), cfg)[0]


def test_rerun_replaces_outputs_only_at_its_commit(archive, tmp_path, cfg, monkeypatch):
    results, before, labels, item = _done_then_changed(archive, tmp_path, cfg)
    seen = {}

    def crash_before_publish(stage, thunk):
        if stage == "publish":
            seen["staged"] = _labels(results, "a").copy()  # segmenting did not touch the live labels
            raise Killed()
        return thunk()

    with pytest.raises(Killed):
        process_image(item, "a", results, ModelRef("classical"), cfg, None, "run-2", stage_runner=crash_before_publish)
    np.testing.assert_array_equal(seen["staged"], labels)
    assert _visible(results) == (before, [("run-1",)])
    assert (tmp_path / "results" / "images" / ".staging" / "run-2" / "new" / "a.ome.zarr").exists()

    # the done row cannot be written: the replaced outputs go back
    real = tables.write_image_row

    def refuse_done(results_, row, **kw):
        if row["status"] == "done":
            raise OSError(28, "No space left on device")
        return real(results_, row, **kw)

    monkeypatch.setattr(tables, "write_image_row", refuse_done)
    out = process_image(item, "a", results, ModelRef("classical"), cfg, None, "run-3")
    assert out.status == "failed" and "No space left" in out.error
    np.testing.assert_array_equal(_labels(results, "a"), labels)
    assert _visible(results)[1] == [("run-1",)]
    monkeypatch.undo()

    # the next run clears what the crashed one left, and commits the new image
    from segpipe.pipeline import clear_staging

    clear_staging(results)
    out = process_image(item, "a", results, ModelRef("classical"), cfg, None, "run-4")
    assert out.status == "done"
    new = _labels(results, "a")
    assert new.shape == (320, 320) and len(np.unique(new)) - 1 == out.n_regions
    rows, runs = _visible(results)
    assert runs == [("run-4",)] and len(rows) == out.n_regions
    state = _states(results)["a"]
    assert state["labels_uri"] == f"{image_url(results, 'a')}/labels/classical"
    assert "publish.replace" in dict(state["timings"])
    assert not list((tmp_path / "results" / "images" / ".staging").rglob("*.ome.zarr"))  # nothing parked left
    clear_staging(results)  # as the run does at its end
    assert os.listdir(tmp_path / "results" / "images") == ["a.ome.zarr"]


def test_next_run_puts_back_what_a_killed_commit_parked(archive, tmp_path, cfg):
    """Killed between the swap and the done row, or between the swap's two moves: the next
    run's clear_staging puts the last done row's store back; a committed run's is dropped."""
    import shutil

    from segpipe.pipeline import clear_staging, staging_url
    from segpipe.pipeline._stages import _swap_in

    results, before, labels, item = _done_then_changed(archive, tmp_path, cfg)

    def killed_after_swap(stage, thunk):
        if stage == "publish":  # the new store is live, the done row never comes
            new, park = staging_url(results, "run-2", "a"), staging_url(results, "run-2", "a", "old")
            _swap_in(new, image_url(results, "a"), park, None)
            raise Killed()
        return thunk()

    with pytest.raises(Killed):
        process_image(item, "a", results, ModelRef("classical"), cfg, None, "run-2", stage_runner=killed_after_swap)
    assert _labels(results, "a").shape == (320, 320)  # uncommitted, next to run-1's regions
    assert clear_staging(results) == ["a"]
    np.testing.assert_array_equal(_labels(results, "a"), labels)
    assert _visible(results) == (before, [("run-1",)])

    # killed between the two moves: nothing is live
    os.makedirs(os.path.dirname(staging_url(results, "run-3", "a", "old")))
    os.rename(image_url(results, "a"), staging_url(results, "run-3", "a", "old"))
    assert clear_staging(results) == ["a"]
    np.testing.assert_array_equal(_labels(results, "a"), labels)

    # a run that committed: what it parked is the replaced store
    assert process_image(item, "a", results, ModelRef("classical"), cfg, None, "run-4").status == "done"
    shutil.copytree(image_url(results, "a"), staging_url(results, "run-4", "a", "old"))
    new = _labels(results, "a")
    assert clear_staging(results) == []
    assert _labels(results, "a").shape == (320, 320) and not os.path.exists(f"{results}/images/.staging")
    np.testing.assert_array_equal(_labels(results, "a"), new)


def test_plan_run_skips_only_unchanged():
    cfg = load_config(None, OVERRIDES)
    chash = config_hash(cfg)
    model = ModelRef("classical", None)
    items = [ArchiveItem(i, f"/x/{i}.tif", f"{i}.tif", "fp-" + i) for i in "abcdefg"]
    done = {"status": "done", "model": "classical", "model_sha256": None, "config_hash": chash}
    states = {
        "a": {**done, "fingerprint": "fp-a"},                       # unchanged → skip
        "b": {**done, "fingerprint": "fp-OLD"},                     # file changed
        "c": {**done, "fingerprint": "fp-c", "model": "nuclei"},    # other model
        "d": {**done, "fingerprint": "fp-d", "config_hash": "x"},   # other settings
        "e": {**done, "fingerprint": "fp-e", "status": "running"},  # crashed mid-way
        "f": {**done, "fingerprint": "fp-f", "status": "failed"},   # failed before
    }                                                               # g: new
    to_run, to_skip = plan_run(items, states, model, cfg)
    assert [i.image_id for i in to_skip] == ["a"]
    assert [i.image_id for i in to_run] == list("bcdefg")
    # new weights for the same model name → redo
    to_run, _ = plan_run(items[:1], states, ModelRef("classical", "sha-new"), cfg)
    assert [i.image_id for i in to_run] == ["a"]
    # the id passed to another file (x.tif added beside x.tiff), same size and time → redo
    other = ArchiveItem("a", "/x/a.tiff", "a.tiff", "fp-a")
    assert plan_run([other], {"a": {**states["a"], "source_uri": "/x/a.tif"}}, model, cfg)[0] == [other]
    # the same file, recorded with the relative path of an older run, or before the archive moved
    for recorded in ("arch/a.tif", "/old/place/a.tif"):
        assert plan_run(items[:1], {"a": {**states["a"], "source_uri": recorded}}, model, cfg)[1] == items[:1]


def test_ids_do_not_depend_on_include_and_exclude(tmp_path, cfg):
    """An image's id names its results: narrowing a run must not hand it to another file
    (with --include a_b.png, a_b.png took a/b.png's id and overwrote its results)."""
    (tmp_path / "arc" / "a").mkdir(parents=True)
    for rel in ("a/b.png", "a_b.png"):
        tifffile.imwrite(tmp_path / "arc" / rel.replace(".png", ".tif"), np.zeros((8, 8), np.uint8))
    every = {i.relpath: i.image_id for i in discover_items(str(tmp_path / "arc"), cfg)}
    assert len(set(every.values())) == 2
    for key, globs in (("run.include", ["a_b.tif"]), ("run.exclude", ["a/*"])):
        narrowed = discover_items(str(tmp_path / "arc"), load_config(None, {**OVERRIDES, key: globs}))
        assert [(i.relpath, i.image_id) for i in narrowed] == [("a_b.tif", every["a_b.tif"])]


def test_ids_the_results_give_are_kept(tmp_path, cfg):
    """x.tif added beside an x.tiff that has the id x gets a new id, instead of taking x over
    (x.tiff would then be redone under a new id and x's rows would name another file)."""
    arc = tmp_path / "arc"
    arc.mkdir()
    tifffile.imwrite(arc / "x.tiff", np.zeros((8, 8), np.uint8))
    (first,) = discover_items(str(arc), cfg)
    assert first.image_id == "x"
    tifffile.imwrite(arc / "x.tif", np.zeros((8, 8), np.uint8))
    assert {i.relpath: i.image_id for i in discover_items(str(arc), cfg)}["x.tif"] == "x"  # no results: the rule
    for recorded in (first.uri, "/old/place/x.tiff", "arc/x.tiff"):  # the archive may have moved since
        states = {"x": {"status": "done", "source_uri": recorded}}
        ids = {i.relpath: i.image_id for i in discover_items(str(arc), cfg, states=states)}
        assert ids["x.tiff"] == "x" and ids["x.tif"].startswith("x-"), recorded
    # one file recorded under two ids (an older run's swap): its exact URI wins, then the smaller id
    states = {"x": {"source_uri": "/old/x.tiff"}, "x-old": {"source_uri": first.uri}, "b": {"source_uri": None}}
    assert {i.relpath: i.image_id for i in discover_items(str(arc), cfg, states=states)}["x.tiff"] == "x-old"


def test_is_transient_and_one_line():
    assert is_transient(OSError("connection reset")) and is_transient(TimeoutError())
    assert not is_transient(ImageReadError("x.tif: truncated"))
    assert not is_transient(FileNotFoundError("gone")) and not is_transient(ValueError("bad"))
    assert one_line(ValueError("a\nb   c")) == "ValueError: a b c"
    assert one_line(ImageReadError("x.tif: truncated")) == "x.tif: truncated"


def test_run_ids_sort_and_are_safe():
    a, b = new_run_id(), new_run_id()
    assert a != b and len(a) == len(b) and a.replace("-", "").isalnum()


def test_default_model_falls_back_when_weights_missing():
    from segpipe import models

    ref = resolve_model("nuclei", fallback="classical")
    if models.is_installed("nuclei"):
        assert ref.name == "nuclei" and ref.fallback_note is None
    else:
        assert ref.name == "classical" and "nuclei" in ref.fallback_note


# -- the small-image fast path ------------------------------------------------------------------
def _zarr_tree(root):
    """Relative file paths of an OME-Zarr store, and every zarr.json's content."""
    import json
    from pathlib import Path

    root = Path(root)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    meta = {f: json.loads((root / f).read_text()) for f in files if f.endswith("zarr.json")}
    return files, meta


def _arrays(root):
    import zarr

    out = {}

    def walk(group, prefix):
        for name, node in group.members():
            if isinstance(node, zarr.Array):
                out[prefix + name] = np.asarray(node[...])
            else:
                walk(node, prefix + name + "/")

    walk(zarr.open_group(str(root), mode="r"), "")
    return out


VOLATILE = {"run_id", "started_at", "finished_at", "updated_at", "duration_s", "timings"}


def test_few_images_send_only_single_block_images_down_the_fast_path(archive, tmp_path, cfg):
    """A lone multi-block image is left to the stage-by-stage path, whose blocks use every worker."""
    from segpipe.pipeline import FAST_MAX_BLOCKS, fast_path_limit, small_image_task

    assert fast_path_limit(4, threads=2) == FAST_MAX_BLOCKS
    assert fast_path_limit(3, threads=2) == 1
    item = discover_items(str(archive), cfg)[0]  # 400² px in 256-px chunks: 4 blocks
    results = str(tmp_path / "results")
    tables.init_results(results)
    ref = resolve_model("classical")
    left = small_image_task(item, item.image_id, results, ref, cfg, "run-1", max_blocks=fast_path_limit(1, 2))
    assert left is None  # handed back untouched
    assert not (tmp_path / "results" / "images" / f"{item.image_id}.ome.zarr").exists()


def test_fast_path_equals_normal_path(archive, tmp_path, cfg, dask_client):
    """One whole-image Dask task writes the same OME-Zarr, labels, regions and image row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segpipe.pipeline import fits_fast_path, small_image_task

    item = discover_items(str(archive), cfg)[0]  # 400² px in 256-px chunks: 4 blocks, stitched
    assert fits_fast_path((400, 400), cfg) and not fits_fast_path((400, 1400), cfg)
    ref = resolve_model("classical")
    normal, fast = str(tmp_path / "normal"), str(tmp_path / "fast")
    for results in (normal, fast):
        tables.init_results(results)
    a = process_image(item, item.image_id, normal, ref, cfg, dask_client, "run-1")
    b = dask_client.submit(small_image_task, item, item.image_id, fast, ref, cfg, "run-2", pure=False).result()
    assert a.status == b.status == "done" and a.n_regions == b.n_regions > 0

    files_a, meta_a = _zarr_tree(image_url(normal, item.image_id))
    files_b, meta_b = _zarr_tree(image_url(fast, item.image_id))
    assert files_a == files_b and meta_a == meta_b
    arrays_a, arrays_b = _arrays(image_url(normal, item.image_id)), _arrays(image_url(fast, item.image_id))
    assert sorted(arrays_a) == sorted(arrays_b) and any(k.startswith("labels/") for k in arrays_a)
    for key, arr in arrays_a.items():
        np.testing.assert_array_equal(arr, arrays_b[key], err_msg=key)

    ra = pq.read_table(f"{normal}/tables/regions/a/run-1.parquet").drop(["run_id"])
    rb = pq.read_table(f"{fast}/tables/regions/a/run-2.parquet").drop(["run_id"])
    assert ra.schema == rb.schema and ra.num_rows == rb.num_rows
    for name in ra.column_names:  # null (area_um2 without µm/px) reads as NaN here, equal to NaN
        np.testing.assert_array_equal(np.asarray(ra.column(name).to_pylist(), dtype=float)
                                      if pa.types.is_floating(ra.schema.field(name).type)
                                      else np.asarray(ra.column(name).to_pylist(), dtype=object),
                                      np.asarray(rb.column(name).to_pylist(), dtype=float)
                                      if pa.types.is_floating(ra.schema.field(name).type)
                                      else np.asarray(rb.column(name).to_pylist(), dtype=object), err_msg=name)
    row_a, row_b = _states(normal)["a"], _states(fast)["a"]
    assert sorted(row_a) == sorted(row_b)

    def same(row, results):  # the URIs differ only by the results folder
        return {k: v.replace(results, "RESULTS") if isinstance(v, str) else v
                for k, v in row.items() if k not in VOLATILE}

    assert same(row_a, normal) == same(row_b, fast)
    assert sorted(row_a["timings"]) == sorted(row_b["timings"])


def test_fast_path_leaves_large_images_alone(archive, tmp_path, cfg):
    from segpipe.pipeline import small_image_task

    item = discover_items(str(archive), cfg)[0]
    small = load_config(None, {**OVERRIDES, "ingest.chunk": 64})  # 400² px = 49 blocks of 64²
    results = str(tmp_path / "results")
    assert small_image_task(item, item.image_id, results, resolve_model("classical"), small, "run-1") is None
    assert not os.path.exists(results)  # nothing written


def test_fast_path_bad_image_fails_alone(archive, tmp_path, cfg):
    from segpipe.pipeline import small_image_task

    broken = [i for i in discover_items(str(archive), cfg) if i.image_id == "broken"][0]
    results = str(tmp_path / "results")
    tables.init_results(results)
    # an unreadable header: left to the normal path, which records the failure
    assert small_image_task(broken, "broken", results, resolve_model("classical"), cfg, "run-1") is None


def test_retrying_runner_retries_only_transient():
    from segpipe.pipeline import retrying_runner

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset by peer")
        return "ok"

    assert retrying_runner(2, 0)("ingest", flaky) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionError):
        retrying_runner(1, 0)("ingest", flaky)
    with pytest.raises(ImageReadError):
        retrying_runner(5, 0)("ingest", lambda: (calls.append(1), (_ for _ in ()).throw(ImageReadError("bad"))))
    assert len(calls) == 2 + 1


def test_skipped_rows_are_one_file_per_run(archive, tmp_path, cfg):
    from segpipe.pipeline import skipped_rows

    results = str(tmp_path / "results")
    tables.init_results(results)
    items = discover_items(str(archive), cfg)
    tables.write_skipped_rows(results, "run-9", skipped_rows(items, {}, "run-9"))
    assert os.listdir(f"{results}/tables/images") == ["_skipped"]
    con = tables.open_results(results)
    assert con.execute("select count(*), min(status), max(status) from images").fetchall() == [(3, "skipped", "skipped")]
    assert _states(results) == {}  # skipped rows are no image's state
    with pytest.raises(Exception, match="skipped"):
        tables.write_skipped_rows(results, "run-9", [{"image_id": "a", "run_id": "run-9", "status": "done"}])


def test_peek_model_matches_resolve_model_without_torch():
    import subprocess
    import sys

    from segpipe.models import BUILTIN_CARDS, is_installed
    from segpipe.models._registry import needs_weights
    from segpipe.pipeline import BUILTIN_MODELS, peek_model

    assert BUILTIN_MODELS == {name: needs_weights(card) for name, card in BUILTIN_CARDS.items()}
    for name in BUILTIN_MODELS:
        if is_installed(name):
            assert peek_model(name) == resolve_model(name)
        assert peek_model(name, fallback="classical") == resolve_model(name, fallback="classical")
    assert peek_model("/some/weights.safetensors") is None
    code = ("import sys; from segpipe.pipeline import peek_model; peek_model('nuclei'); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_fast_path_writes_nothing_once_another_run_holds_the_lock(archive, tmp_path, cfg):
    from segpipe.lock import ResultsLock
    from segpipe.pipeline import small_image_task

    item = discover_items(str(archive), cfg)[0]
    results = str(tmp_path / "results")
    tables.init_results(results)
    with ResultsLock(results, owner="run-2"):
        out = small_image_task(item, item.image_id, results, resolve_model("classical"), cfg, "run-1")
    assert out.status == "failed" and "run-2" in out.error
    assert _states(results) == {} and not os.path.exists(image_url(results, "a"))


def test_noop_run_is_recorded_without_the_flow(archive, tmp_path, cfg):
    from segpipe.pipeline import plan_archive, record_noop_run

    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        os.link(archive / name, folder / name)
    results = str(tmp_path / "results")
    plan = plan_archive(str(folder), results, None, cfg)  # no tables yet: everything to run
    assert plan is not None and [i.image_id for i in plan.to_run] == ["a", "b"]
    tables.init_results(results)
    for item in plan.items:
        assert process_image(item, item.image_id, results, plan.model, cfg, None, "run-1").status == "done"
    plan = plan_archive(str(folder), results, None, cfg)
    assert plan.to_run == [] and len(plan.to_skip) == 2
    import shutil

    from segpipe.pipeline import staging_url

    shutil.copytree(image_url(results, "a"), staging_url(results, "run-0", "a"))  # a crashed run's leftover
    summary = record_noop_run(plan)
    assert not os.path.exists(f"{results}/images/.staging")  # cleared, the live store untouched
    assert os.path.exists(f"{image_url(results, 'a')}/labels")
    assert (summary.done, summary.skipped, summary.failed, summary.status) == (0, 2, 0, "done")
    assert summary.report and os.path.exists(summary.report)
    con = tables.open_results(results)
    assert con.execute("select status, n_skipped from runs where run_id = ?", [summary.run_id]).fetchall() == [
        ("done", 2)]
    assert con.execute("select count(*) from images where run_id = ? and status = 'skipped'",
                       [summary.run_id]).fetchall() == [(2,)]
    assert _states(results)["a"]["run_id"] == "run-1"  # skipped rows are no state
    # the plan no longer holds under the lock (an image changed meanwhile): nothing is written
    tables.write_image_row(results, {**_states(results)["a"], "run_id": "run-3", "status": "failed"})
    assert record_noop_run(plan) is None
    assert plan_archive(str(folder), results, "/no/such/weights.safetensors", cfg) is None
