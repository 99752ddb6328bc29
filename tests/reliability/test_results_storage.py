"""RESULTS that cannot be written: path under a file, read-only mount, disk full.

Tests run as root, where ``chmod`` does not stop writes, so read-only is a read-only bind
mount and disk full a 2 MiB tmpfs (both skipped when ``mount`` is not permitted). Each
run must end with a clear error (exit status ≠ 0, one line naming the problem) and leave
what earlier runs wrote intact and readable.
"""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
from reliability_helpers import nuclei_tif, snapshot

pytestmark = pytest.mark.timeout(300)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def _mounted(args: list[str], target: Path):
    target.mkdir(exist_ok=True)
    proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount not permitted here: {proc.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_results_under_a_file(tmp_path, run_segpipe):
    archive = tmp_path / "archive"
    archive.mkdir()
    nuclei_tif(archive / "a.tif", seed=1)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file, not a folder\n")
    proc = run_segpipe(archive, blocker / "results")
    assert proc.returncode != 0
    assert "not_a_folder" in proc.stderr + proc.stdout, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert blocker.read_text() == "a file, not a folder\n"


def test_results_read_only(tmp_path, run_segpipe):
    archive = tmp_path / "archive"
    archive.mkdir()
    nuclei_tif(archive / "a.tif", seed=1)
    results = tmp_path / "results"
    assert run_segpipe(archive, results).returncode == 0
    before = _tree(results)
    want = snapshot(results)
    nuclei_tif(archive / "b.tif", seed=2)  # new work for the second run
    with _mounted(["--bind", str(results)], results):
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(results)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"read-only remount not permitted: {remount.stderr.strip()}")
        proc = run_segpipe(archive, results)
        assert proc.returncode != 0
        text = proc.stderr + proc.stdout
        assert "Read-only file system" in _last_line(proc) and "results" in _last_line(proc), text[-1500:]
        # (Prefect also logs this run-level error with a traceback before it: see
        # test_bad_inputs.py::test_bad_model_files_stop_before_work, the same flows bug)
        assert _tree(results) == before
    assert _tree(results) == before
    assert snapshot(results) == want


def test_results_disk_full(tmp_path, run_segpipe):
    archive = tmp_path / "archive"
    archive.mkdir()
    nuclei_tif(archive / "a.tif", side=128, seed=1)
    with _mounted(["-t", "tmpfs", "-o", "size=2m", "tmpfs"], tmp_path / "small") as small:
        results = small / "results"
        first = run_segpipe(archive, results)
        assert first.returncode == 0, first.stderr[-2000:]
        want = snapshot(results)
        # an incompressible 1600² image cannot fit in what is left of 2 MiB
        noise = np.random.default_rng(0).integers(0, 256, (1600, 1600), np.uint8)
        tifffile.imwrite(archive / "big.tif", noise)
        proc = run_segpipe(archive, results)
        assert proc.returncode != 0
        text = proc.stderr + proc.stdout
        # The run says why, in one line: either it stops because its own rows cannot be
        # written ("error: cannot write …/tables/runs/…: [Errno 28] …", the last line), or —
        # when the run row and report still fit — the image fails alone and the summary lists
        # it ("failed big: OSError: [Errno 28] No space left on device"). Which one depends on
        # how many bytes the image wrote before the disk filled.
        said = [ln.strip() for ln in text.splitlines() if "No space left on device" in ln]
        assert "No space left on device" in _last_line(proc) or any(
            ln.startswith("failed big:") for ln in said
        ), text[-2000:]
        # what the first run wrote is intact and still the visible result
        got = snapshot(results)
        assert got["regions"] == want["regions"]
        assert [r for r in got["images"] if r[0] == "a"] == [r for r in want["images"] if r[0] == "a"]
        assert all(r[1] != "done" for r in got["images"] if r[0] == "big")  # never reported done
