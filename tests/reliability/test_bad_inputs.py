"""Bad input through the whole pipeline: one ``segpipe run`` over good and bad images.

Each bad image fails alone with a one-line error naming its file; the good ones are done
and their regions are visible. Run-level bad input (settings, model files) stops the run
before any work with one line on stderr and leaves RESULTS untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from reliability_helpers import nuclei_tif, snapshot

from segpipe import tables

pytestmark = pytest.mark.timeout(300)


def _corrupt_tile(path: Path) -> None:
    image = (np.random.default_rng(3).random((256, 256)) * 255).astype(np.uint8)
    tifffile.imwrite(path, image, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = int(page.dataoffsets[5]), int(page.databytecounts[5])
    raw = bytearray(path.read_bytes())
    raw[offset: offset + count] = np.random.default_rng(0).integers(0, 256, count, np.uint8).tobytes()
    path.write_bytes(bytes(raw))


def _bomb(path: Path) -> None:
    tifffile.imwrite(path, np.zeros((256, 256), np.uint8), tile=(256, 256), bigtiff=True)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(1_000_000)
        tif.pages[0].tags["ImageLength"].overwrite(1_000_000)


def _bad_archive(folder: Path) -> dict[str, Path]:
    """Two good images and one of each kind of bad file; name → path of the bad ones."""
    folder.mkdir()
    nuclei_tif(folder / "good_a.tif", seed=1)
    nuclei_tif(folder / "good_b.tif", seed=2)
    bad = {}
    truncated = nuclei_tif(folder / "truncated.tif", seed=4)
    truncated.write_bytes(truncated.read_bytes()[:12])
    bad["truncated"] = truncated
    bad["corrupt_tile"] = folder / "corrupt_tile.tif"
    _corrupt_tile(bad["corrupt_tile"])
    bad["wrong_magic"] = folder / "wrong_magic.tif"
    bad["wrong_magic"].write_bytes(b"GIF89a this is not a tiff at all" + b"\x00" * 200)
    bad["zero_bytes"] = folder / "zero_bytes.tif"
    bad["zero_bytes"].write_bytes(b"")
    bad["huge_header"] = folder / "huge_header.tif"
    _bomb(bad["huge_header"])
    bad["complex_dtype"] = folder / "complex_dtype.tif"
    tifffile.imwrite(bad["complex_dtype"], np.zeros((64, 64), np.complex64))
    bad["int64_dtype"] = folder / "int64_dtype.tif"
    tifffile.imwrite(bad["int64_dtype"], np.zeros((64, 64), np.int64))
    bad["many_channels"] = folder / "many_channels.tif"
    tifffile.imwrite(bad["many_channels"], np.zeros((100, 32, 32), np.uint8), photometric="minisblack")
    return bad


def test_bad_images_fail_alone(tmp_path, run_segpipe):
    archive = tmp_path / "archive"
    bad = _bad_archive(archive)
    # smaller than one tile / chunk: not an error, it is segmented like any other image
    tiny = np.zeros((20, 24), np.uint8)
    tiny[5:12, 6:14] = 200
    tifffile.imwrite(archive / "tiny.tif", tiny)
    results = tmp_path / "results"
    proc = run_segpipe(archive, results)
    assert proc.returncode == 1, proc.stderr[-2000:]
    states = tables.image_states(str(results))
    by_source = {Path(s["source_uri"]).name: s for s in states.values()}
    assert len(by_source) == len(bad) + 3, sorted(by_source)
    for name, path in bad.items():
        state = by_source[path.name]
        assert state["status"] == "failed", (name, state)
        error = state["error"]
        assert error and "\n" not in error and path.name in error, (name, error)
        assert path.name in proc.stdout + proc.stderr, f"{name} not named in the run's output"
    for good in ("good_a.tif", "good_b.tif", "tiny.tif"):
        assert by_source[good]["status"] == "done", by_source[good]
        assert by_source[good]["error"] is None
    snap = snapshot(results)
    assert snap["duplicates"] == 0
    with_regions = {r[0] for r in snap["regions"]}
    good_ids = {by_source[g]["image_id"] for g in ("good_a.tif", "good_b.tif", "tiny.tif")}
    assert with_regions == good_ids  # regions of every good image, none of a bad one
    tiny_rows = [r for r in snap["regions"] if r[0] == by_source["tiny.tif"]["image_id"]]
    assert len(tiny_rows) == 1 and 40 <= tiny_rows[0][3] <= 7 * 8  # blur rounds the corners


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def one_run(tmp_path_factory, prefect_api):
    """(archive, results of one good run, file tree of those results): shared by the run-level cases."""
    import os
    import subprocess

    from reliability_helpers import SEGPIPE, SETTINGS, settings_env

    tmp = tmp_path_factory.mktemp("runlevel")
    archive = tmp / "archive"
    archive.mkdir()
    nuclei_tif(archive / "a.tif", seed=1)
    results = tmp / "results"
    env = {**os.environ, **settings_env(SETTINGS), "PREFECT_API_URL": prefect_api, "SEGPIPE_RUN__N_WORKERS": "1"}
    proc = subprocess.run([SEGPIPE, "run", str(archive), "--out", str(results)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return archive, results, _tree(results)


def _check_refused(cases: dict, archive: Path, results: Path, run_segpipe) -> dict[str, list[str]]:
    """Run each case; assert exit status and that the last stderr line names the file."""
    outputs = {}
    for case, (args, name) in cases.items():
        proc = run_segpipe(archive, results, args=args)
        assert proc.returncode != 0, case
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines and name in lines[-1], (case, proc.stderr[-1500:])
        outputs[case] = lines
    return outputs


def test_bad_settings_stop_before_work(tmp_path, run_segpipe, one_run):
    """Unknown key / wrong type in a settings file: exit 1, one line naming the file, RESULTS untouched."""
    archive, results, before = one_run
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[infer]\nbatchh = 4\n")
    wrong_type = tmp_path / "wrong_type.toml"
    wrong_type.write_text("[infer]\nbatch = \"lots\"\n")
    cases = {"unknown key": (("--config", str(unknown)), "unknown.toml"),
             "wrong type": (("--config", str(wrong_type)), "wrong_type.toml")}
    outputs = _check_refused(cases, archive, results, run_segpipe)
    assert _tree(results) == before  # nothing written, nothing lost
    for case, lines in outputs.items():
        assert len(lines) == 1, (case, lines)


def _bad_models(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(weights whose card's sha256 is wrong, a .pt pickle with code, the file its code would create)."""
    from segpipe.models import save_model
    from segpipe.models.testing import tiny_model

    model = tiny_model("binary")
    weights = Path(save_model(model.module, model.card, tmp_path / "m" / "mine"))
    card = json.loads(weights.with_suffix(".json").read_text())
    bad_sha = tmp_path / "badsha" / "mine.safetensors"
    bad_sha.parent.mkdir()
    bad_sha.write_bytes(weights.read_bytes())
    bad_sha.with_suffix(".json").write_text(json.dumps({**card, "sha256": "0" * 64}))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil" / "mine.pt"
    evil.parent.mkdir()
    evil.write_bytes(_evil_pickle(marker))
    evil.with_suffix(".json").write_text(json.dumps({**card, "sha256": None}))
    return bad_sha, evil, marker


def test_bad_model_files_stop_before_work(tmp_path, run_segpipe, one_run):
    """Card sha256 mismatch / pickle with code: refused, never executed, RESULTS untouched, one line."""
    archive, results, before = one_run
    bad_sha, evil, marker = _bad_models(tmp_path)
    cases = {"sha mismatch": (("--model", str(bad_sha)), "mine.safetensors"),
             "pickle with code": (("--model", str(evil)), "mine.pt")}
    outputs = _check_refused(cases, archive, results, run_segpipe)
    assert not marker.exists(), "the pickle's code ran"
    assert _tree(results) == before  # nothing written, nothing lost
    for case, lines in outputs.items():  # checked before Prefect starts: no traceback
        assert len(lines) == 1 and "Traceback" not in "\n".join(lines), (case, lines[:3])


def _evil_pickle(marker: Path) -> bytes:
    import pickle

    class Evil:
        def __reduce__(self):  # noqa: D105
            return (open, (str(marker), "w"))

    return pickle.dumps({"weight": Evil()})
