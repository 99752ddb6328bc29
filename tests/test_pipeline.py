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
