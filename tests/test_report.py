"""The run report: one self-contained HTML page, checked in headless chromium.

The chromium tests skip when ``/usr/bin/chromium`` is absent; CI installs it with
``apt-get install -y chromium`` (Debian) for them to run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_show import build_results  # tests/ is on sys.path (rootdir conftest)

from segpipe.errors import ResultsError
from segpipe.report import write_report
from segpipe.show import class_colors
from segpipe.tables import write_image_row, write_run_row

CHROMIUM = Path("/usr/bin/chromium")
ERROR = "ImageReadError: bad.svs: truncated tile <3, 4>"


def make_run(results: str, storage_options: dict[str, Any] | None = None) -> None:
    """Run ``run1``: two done images, one failed, one skipped."""
    so = storage_options
    build_results(results, "slide-a", storage_options=so, chunk=512)
    build_results(results, "slide-b", seed=1, storage_options=so, chunk=512)
    write_image_row(results, {"image_id": "bad", "run_id": "run1", "status": "failed",
                              "source_uri": "/archive/bad.svs", "error": ERROR}, storage_options=so)  # fmt: skip
    write_image_row(results, {"image_id": "same", "run_id": "run1", "status": "skipped"},
                    storage_options=so)  # fmt: skip
    write_run_row(results, {"run_id": "run1", "status": "partial", "n_images": 4, "n_done": 2,
                            "n_failed": 1, "n_skipped": 1, "duration_s": 12.5, "model": "nuclei",
                            "model_sha256": "ab" * 32, "config_hash": "c0ffee",
                            "timings": {"segment": 9.0}}, storage_options=so)  # fmt: skip


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


@pytest.fixture
def report(tmp_path: Path) -> Path:
    results = str(tmp_path / "res")
    make_run(results)
    return Path(write_report(results, "run1"))


def test_report_is_self_contained(report: Path, tmp_path: Path) -> None:
    assert report == tmp_path / "res" / "reports" / "run1.html"
    page = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "url(" not in page and "<script" not in page and "<link" not in page
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(srcs) == 4 and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    assert "default-src 'none'" in page  # CSP: the browser may not fetch anything else
    assert "truncated tile &lt;3, 4&gt;" in page  # errors are escaped
    assert not list(report.parent.glob(".*.tmp"))


def test_unknown_run(report: Path) -> None:
    with pytest.raises(ResultsError, match="run 'run9' is not in .*recent runs: run1"):
        write_report(str(report.parent.parent), "run9")


def test_report_on_s3(s3: Any) -> None:
    results = f"s3://{s3.bucket('report')}/res"
    make_run(results, s3.storage_options)
    url = write_report(results, "run1", storage_options=s3.storage_options)
    assert url == f"{results}/reports/run1.html"
    page = s3.fs.cat(url).decode()
    assert page.count("data:image/jpeg;base64,") == 4 and "slide-b" in page


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"
)
def test_report_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    dom = _chromium(["--dump-dom", report.as_uri()], tmp_path).stdout
    assert "segpipe run run1" in dom and "partial" in dom
    for image_id in ("slide-a", "slide-b", "bad", "same"):
        assert f'id="img-{image_id}"' in dom
    assert "truncated tile &lt;3, 4&gt;" in dom and 'id="classes"' in dom
    assert len(re.findall(r'<rect class="bar"', dom)) > 10
    assert len(re.findall(r"<img ", dom)) == 4

    shot = tmp_path / "shot.png"
    _chromium(["--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()], tmp_path)
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert rgb.shape == (2400, 1200, 3)
    colours = class_colors({"tumor", "stroma"})
    for colour in colours.values():  # histogram bars and contours in both class colours
        assert (np.abs(rgb - colour).sum(axis=-1) < 12).sum() > 200
    grey = (np.abs(rgb - 220).sum(axis=-1) < 6).sum()  # the thumbnails' background was decoded
    assert grey > 4 * 260 * 300 * 0.8


def test_report_pictures_drawn_on_the_cluster_are_the_same(report: Path, dask_client: Any) -> None:
    """The flow hands the run's client over: its workers draw the pictures, same page."""
    results = str(report.parent.parent)
    on_threads = report.read_text(encoding="utf-8")
    on_cluster = Path(write_report(results, "run1", client=dask_client)).read_text(encoding="utf-8")
    assert on_cluster == on_threads
    assert len(re.findall(r"<img[^>]* src=", on_cluster)) == 4


def test_areas_in_px_when_an_image_has_no_pixel_size(tmp_path: Path) -> None:
    """Session 9: one image with a pixel size made the whole run's statistics µm², and the
    regions of images without one (null area_um2) silently dropped out of them."""
    results = str(tmp_path / "res")
    make_run(results)
    page = Path(write_report(results, "run1")).read_text(encoding="utf-8")
    assert "Region areas (µm²)" in page  # every done image has a pixel size
    write_image_row(results, {"image_id": "slide-b", "run_id": "run1", "status": "done", "n_regions": 12,
                              "mpp": None, "labels_uri": "x/labels/nuclei"})  # fmt: skip
    page = Path(write_report(results, "run1")).read_text(encoding="utf-8")
    assert "Region areas (px)" in page and "µm²" not in page


def test_report_of_a_packed_run_is_the_same(report: Path) -> None:
    """A report written again after the run's table files were packed reads the same rows."""
    from segpipe.tables import pack_run

    results = str(report.parent.parent)
    before = report.read_text(encoding="utf-8")
    assert pack_run(results, "run1", ["slide-a", "slide-b", "bad"]).regions == 2
    assert Path(write_report(results, "run1")).read_text(encoding="utf-8") == before
