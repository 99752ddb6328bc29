"""archive: discovery (local + S3), fingerprints, safe and unique image ids."""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segpipe.archive import (
    MAX_ID_LENGTH,
    ArchiveEntry,
    assign_image_ids,
    discover,
    fingerprint,
    image_id_for,
)
from segpipe.errors import ConfigError

SAFE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _tree(root: Path, io_helpers: Any) -> None:
    """A small archive: images in nested folders, a zarr image, non-images, hidden files."""
    (root / "slides" / "deep").mkdir(parents=True)
    data = io_helpers.smooth_image((3, 40, 50), np.uint8)
    io_helpers.write_strip_tiff(root / "slides" / "a b.svs", data)
    io_helpers.write_strip_tiff(root / "slides" / "deep" / "c.TIF", data)
    io_helpers.write_png(root / "top.png", data)
    io_helpers.write_jpeg(root / "photo.jpeg", data)
    io_helpers.write_ome_zarr(root / "slides" / "z.ome.zarr", data, n_levels=1)
    (root / "notes.txt").write_text("not an image")
    (root / "slides" / "._a b.svs").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / ".hidden").mkdir()
    io_helpers.write_png(root / ".hidden" / "h.png", data)


EXPECTED = ["photo.jpeg", "slides/a b.svs", "slides/deep/c.TIF", "slides/z.ome.zarr", "top.png"]


def test_discover_local(tmp_path: Path, io_helpers: Any) -> None:
    _tree(tmp_path, io_helpers)
    entries = discover(str(tmp_path))
    assert [e.relpath for e in entries] == EXPECTED
    by_rel = {e.relpath: e for e in entries}
    assert by_rel["slides/z.ome.zarr"].is_dir
    assert by_rel["top.png"].size == (tmp_path / "top.png").stat().st_size
    assert by_rel["top.png"].mtime == pytest.approx((tmp_path / "top.png").stat().st_mtime)
    assert by_rel["slides/a b.svs"].uri == f"{tmp_path}/slides/a b.svs"
    assert entries == discover(str(tmp_path) + "/")  # deterministic, trailing slash ignored


def test_include_exclude_and_single_file(tmp_path: Path, io_helpers: Any) -> None:
    _tree(tmp_path, io_helpers)
    assert [e.relpath for e in discover(str(tmp_path), include=["slides/*"])] == [
        "slides/a b.svs",
        "slides/deep/c.TIF",
        "slides/z.ome.zarr",
    ]
    assert [e.relpath for e in discover(str(tmp_path), include=["*.tif"])] == ["slides/deep/c.TIF"]
    assert [e.relpath for e in discover(str(tmp_path), exclude=["slides/deep/*", "*.zarr"])] == [
        "photo.jpeg",
        "slides/a b.svs",
        "top.png",
    ]
    single = discover(str(tmp_path / "top.png"))
    assert [(e.relpath, e.is_dir) for e in single] == [("top.png", False)]
    assert discover(str(tmp_path / "slides" / "z.ome.zarr"))[0].is_dir
    with pytest.raises(ConfigError, match="does not exist"):
        discover(str(tmp_path / "missing"))


def test_discover_s3(s3: Any, tmp_path: Path, io_helpers: Any) -> None:
    _tree(tmp_path, io_helpers)
    bucket = s3.bucket("archive")
    s3.fs.put(str(tmp_path) + "/", f"{bucket}/incoming/", recursive=True)
    s3.fs.invalidate_cache()
    entries = discover(f"s3://{bucket}/incoming", storage_options=s3.storage_options)
    assert [e.relpath for e in entries] == EXPECTED
    png = next(e for e in entries if e.relpath == "top.png")
    assert png.uri == f"s3://{bucket}/incoming/top.png" and png.etag
    fp = fingerprint(png, storage_options=s3.storage_options)
    assert "etag=" in fp
    # content changes -> ETag and fingerprint change
    s3.fs.pipe(f"{bucket}/incoming/top.png", b"\x89PNG\r\n\x1a\n changed")
    s3.fs.invalidate_cache()
    again = next(
        e
        for e in discover(f"s3://{bucket}/incoming", storage_options=s3.storage_options)
        if e.relpath == "top.png"
    )
    assert fingerprint(again, storage_options=s3.storage_options) != fp
    zarr_entry = next(e for e in entries if e.is_dir)
    assert fingerprint(zarr_entry, storage_options=s3.storage_options).startswith("size=")


def test_fingerprint_changes_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.tif"
    path.write_bytes(b"II*\x00" + b"a" * 100)
    entry = discover(str(path))[0]
    fp, sha = fingerprint(entry), fingerprint(entry, content_hash=True)
    assert fp == fingerprint(discover(str(path))[0])  # stable
    assert sha.startswith("sha256:")
    path.write_bytes(b"II*\x00" + b"b" * 100)  # same size
    os.utime(path, (1_000_000, 1_000_000))
    changed = discover(str(path))[0]
    assert fingerprint(changed) != fp
    assert fingerprint(changed, content_hash=True) != sha
    os.utime(path, (entry.mtime, entry.mtime))  # same size and mtime: only the hash sees it
    assert fingerprint(discover(str(path))[0], content_hash=True) != sha


def test_zarr_directory_fingerprint(tmp_path: Path, io_helpers: Any) -> None:
    data = io_helpers.smooth_image((1, 40, 50), np.uint8)
    io_helpers.write_ome_zarr(tmp_path / "z.zarr", data, n_levels=1)
    entry = discover(str(tmp_path))[0]
    fp, sha = fingerprint(entry), fingerprint(entry, content_hash=True)
    io_helpers.write_ome_zarr(tmp_path / "z.zarr", data + 1, n_levels=1)
    assert fingerprint(entry, content_hash=True) != sha
    (tmp_path / "z.zarr" / "extra").write_bytes(b"x")
    assert fingerprint(entry) != fp


def test_image_ids_examples() -> None:
    assert image_id_for("slides/a b.svs") == "slides_a_b"
    assert image_id_for("x.ome.tiff") == "x"
    assert image_id_for("../../etc/x.tif") == "etc_x"
    assert image_id_for("/abs/path/y.png") == "abs_path_y"
    assert image_id_for("C:\\scans\\Z.ndpi") == "scans_z"
    assert image_id_for("..").startswith("image-")
    assert image_id_for("....tif").startswith("image-")
    assert image_id_for("Ünïcödé/naïve café.svs") == "unicode_naive_cafe"
    assert image_id_for("образец.svs").startswith("image-")
    assert image_id_for("con.tif") == "con_"
    long = image_id_for("d/" + "x" * 500 + ".tif")
    assert len(long) <= MAX_ID_LENGTH and SAFE.match(long)


HOSTILE = [
    "../../etc/x.tif",
    "/etc/x.tif",
    "etc/x.tif",
    "etc_x.tif",
    "ETC/X.TIF",
    "a.tif",
    "A.tif",
    "a.TIF",
    "café.svs",
    "cafe\u0301.svs",
    "CAFÉ.svs",
    "образец.svs",
    "пример.svs",
    "..",
    ".",
    "",
    "a/../../b.png",
    "x" * 300 + ".tif",
    "x" * 300 + ".png",
    " spaced  name .jpg",
    "weird:*?<>|.tif",
    "slides/a b.svs",
    "slides_a b.svs",
    "a..b.tif",
    "-lead.tif",
    ".dot.tif",
]


def _assert_safe(ident: str, results: Path) -> None:
    assert SAFE.match(ident), ident
    assert "/" not in ident and ".." not in ident and len(ident) <= MAX_ID_LENGTH
    target = (results / "images" / f"{ident}.ome.zarr").resolve()
    assert target.parent == (results / "images").resolve()


def test_hostile_names_get_unique_safe_ids(tmp_path: Path) -> None:
    ids = assign_image_ids(HOSTILE)
    assert set(ids) == set(HOSTILE)
    assert len(set(ids.values())) == len(set(HOSTILE)), ids
    for ident in ids.values():
        _assert_safe(ident, tmp_path)
    # deterministic: order does not matter
    assert assign_image_ids(list(reversed(HOSTILE))) == ids
    # the plain name keeps the plain id; variants get a hash suffix
    assert ids["a.tif"] == "a" and ids["etc/x.tif"] == "etc_x"
    assert ids["A.tif"].startswith("a-") and ids["../../etc/x.tif"].startswith("etc_x-")


def test_adding_a_variant_keeps_existing_ids() -> None:
    before = assign_image_ids(["a.tif", "slides/b.svs"])
    after = assign_image_ids(["a.tif", "slides/b.svs", "A.tif", "Slides/B.svs"])
    assert after["a.tif"] == before["a.tif"] and after["slides/b.svs"] == before["slides/b.svs"]


def test_recorded_ids_are_kept() -> None:
    """An id names its results: a file added later must not take the id of one that has it."""
    assert assign_image_ids(["x.tif", "x.tiff"])["x.tif"] == "x"  # the rule alone prefers x.tif
    ids = assign_image_ids(["x.tif", "x.tiff"], keep={"x.tiff": "x"})
    assert ids["x.tiff"] == "x" and ids["x.tif"].startswith("x-")
    ids = assign_image_ids(["a/b.png", "a_b.png"], keep={"a_b.png": "a_b"})
    assert ids == {"a/b.png": ids["a/b.png"], "a_b.png": "a_b"} and ids["a/b.png"].startswith("a_b-")
    # a kept id that is another group's plain id pushes that group's file to a hashed one
    ids = assign_image_ids(["odd.tif", "q.tif"], keep={"odd.tif": "q"})
    assert ids["odd.tif"] == "q" and ids["q.tif"].startswith("q-")
    # unusable records are ignored: unsafe, reserved, held by two files, of files not listed
    for keep in ({"a.tif": "../a"}, {"a.tif": "con"}, {"a.tif": "A"}, {"a.tif": "z", "b.tif": "z"},
                 {"gone.tif": "a"}):  # fmt: skip
        assert assign_image_ids(["a.tif", "b.tif"], keep=keep) == {"a.tif": "a", "b.tif": "b"}, keep


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=40), max_size=12), st.data())
def test_ids_unique_whatever_is_kept(relpaths: list[str], data: st.DataObject) -> None:
    keep = data.draw(st.dictionaries(st.sampled_from(relpaths) if relpaths else st.nothing(),
                                     st.sampled_from(["a", "b", "a-1", "x_y", "con", "../a", "B"])))
    ids = assign_image_ids(relpaths, keep=keep)
    assert len(set(ids.values())) == len(ids) == len(set(relpaths))
    assert all(SAFE.match(i) and ".." not in i for i in ids.values())
    held = [i for i in keep.values() if i in ("a", "b", "a-1", "x_y")]
    assert all(ids[rel] == i for rel, i in keep.items() if held.count(i) == 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=40), max_size=12))
def test_ids_always_safe_and_unique(relpaths: list[str]) -> None:
    ids = assign_image_ids(relpaths)
    assert len(set(ids.values())) == len(ids) == len(set(relpaths))
    for ident in ids.values():
        assert SAFE.match(ident) and ".." not in ident and len(ident) <= MAX_ID_LENGTH
        assert posixpath.normpath(f"images/{ident}").startswith("images/")


def test_entry_is_small_and_hashable() -> None:
    e = ArchiveEntry("s3://b/a.tif", "a.tif", 10, None, "abc")
    assert hash(e) == hash(ArchiveEntry("s3://b/a.tif", "a.tif", 10, None, "abc"))
