"""fsspec helpers: local paths and s3:// URLs behave the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from segpipe.io import exists, is_remote, join_url, move, open_binary, remove, url_to_fs, zarr_store


def test_url_helpers() -> None:
    assert is_remote("s3://b/k") and is_remote("memory://x")
    assert not is_remote("/tmp/x") and not is_remote("file:///tmp/x") and not is_remote("rel/x")
    assert join_url("s3://b/r/", "images", "/a.ome.zarr/") == "s3://b/r/images/a.ome.zarr"
    assert join_url("/tmp/r", "tables", "", "runs") == "/tmp/r/tables/runs"
    assert join_url("s3://b", "x") == "s3://b/x"
    fs, path = url_to_fs("file:///tmp/abc", {"key": "ignored for local paths"})
    assert path == "/tmp/abc" and ("file" in fs.protocol or "local" in fs.protocol)


def _roundtrip(base: str, storage_options: dict[str, Any] | None) -> None:
    url = join_url(base, "sub", "a.zarr")
    assert not exists(url, storage_options)
    root = zarr.open_group(store=zarr_store(url, storage_options), mode="w", zarr_format=3)
    root.create_array("0", shape=(2, 5), dtype=np.uint8)[...] = 7
    assert exists(url, storage_options)
    ro = zarr.open_group(store=zarr_store(url, storage_options, read_only=True), mode="r")
    assert int(np.asarray(ro["0"][...]).sum()) == 70
    fs, path = url_to_fs(join_url(base, "f.bin"), storage_options)
    fs.pipe_file(path, b"0123456789")
    with open_binary(join_url(base, "f.bin"), storage_options) as fh:
        fh.seek(4)
        assert fh.read(3) == b"456"
    # a whole zarr tree moves under a new (not yet existing) parent, readable there
    moved = join_url(base, "staging", "run", "a.zarr")
    move(url, moved, storage_options)
    assert not exists(url, storage_options) and exists(moved, storage_options)
    ro = zarr.open_group(store=zarr_store(moved, storage_options, read_only=True), mode="r")
    assert int(np.asarray(ro["0"][...]).sum()) == 70
    with pytest.raises(FileExistsError, match="exists"):
        move(join_url(base, "f.bin"), moved, storage_options)
    with pytest.raises(FileNotFoundError):
        move(url, join_url(base, "elsewhere"), storage_options)
    move(moved, url, storage_options)
    remove(url, storage_options)
    remove(url, storage_options)  # absent: no error
    assert not exists(url, storage_options)


def test_local_roundtrip(tmp_path: Path) -> None:
    _roundtrip(str(tmp_path), None)


def test_s3_roundtrip(s3: Any) -> None:
    _roundtrip(f"s3://{s3.bucket('fsutil')}/results", s3.storage_options)


def test_local_names_with_double_colons(tmp_path: Path) -> None:
    """"::" is fsspec's URL chaining in a URL, but just characters in a local file name."""
    path = tmp_path / "c::d.tif"
    path.write_bytes(b"abc")
    fs, local = url_to_fs(str(path))
    assert local == str(path) and fs.size(local) == 3
    assert exists(str(path)) and open_binary(str(path)).read() == b"abc"
