"""The run report: one self-contained HTML page per run, ``RESULTS/reports/<run_id>.html``.

Everything is inline (CSS, SVG histograms, images as base64 ``data:`` URIs) and a
Content-Security-Policy forbids any other source, so the page opens offline, from an
e-mail attachment or an S3 download, and never makes a network request.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from segpipe.errors import ResultsError
from segpipe.io import join_url, url_to_fs

__all__ = ["write_report", "render_report", "MAX_IMAGES"]

log = logging.getLogger("segpipe.report")

#: Images drawn with thumbnails; the others are listed in the tables only.
MAX_IMAGES = 100
THUMB_SIZE = 320
N_BINS = 20

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d232a;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px}h3{font-size:15px;margin:0 0 6px}
.muted{color:#66707a;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 14px;min-width:110px}
.card b{display:block;font-size:22px}.card span{font-size:12px;color:#66707a}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.image{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px;margin:12px 0}
.pics{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.pics img{border:1px solid #dde1e6;image-rendering:pixelated;max-width:100%}
.status-done{color:#1a7f37}.status-failed{color:#cf222e}.status-skipped,.status-running{color:#9a6700}
.error{font-family:ui-monospace,monospace;white-space:pre-wrap;color:#cf222e}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;border-radius:2px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else _e(value)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "–"


def _data_uri(image: Any) -> str:
    # JPEG, 4:4:4 (thin coloured contours stay sharp): 0.5 ms and 30 kB for a 320² thumbnail,
    # against 12 ms and 100 kB as PNG, which made the report a visible part of a run
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=90, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def histogram_svg(
    values_by_class: dict[str, np.ndarray],
    edges: np.ndarray,
    colors: dict[str, tuple[int, int, int]],
    unit: str,
    width: int = 360,
    height: int = 120,
) -> str:
    """Grouped bar histogram (one bar per class and bin) as inline SVG."""
    counts = {c: np.histogram(v, bins=edges)[0] for c, v in values_by_class.items()}
    top = max([int(h.max()) for h in counts.values() if h.size] + [1])
    n_bins, n_cls = len(edges) - 1, max(len(counts), 1)
    plot_h, bin_w = height - 22, width / max(n_bins, 1)
    bars = []
    for k, (cls, hist) in enumerate(sorted(counts.items())):
        for i, count in enumerate(hist):
            if count == 0:
                continue
            h = plot_h * count / top
            x = i * bin_w + k * bin_w / n_cls
            bars.append(
                f'<rect class="bar" x="{x:.1f}" y="{plot_h - h:.1f}" width="{max(bin_w / n_cls - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{_rgb(colors.get(cls, (120, 120, 120)))}">'
                f"<title>{_e(cls)}: {count} in [{edges[i]:.4g}, {edges[i + 1]:.4g}) {unit}</title></rect>"
            )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="area histogram">'
        f'<line x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#99a"/>{"".join(bars)}'
        f'<text x="0" y="{height - 6}" font-size="11" fill="#66707a">{edges[0]:.4g}</text>'
        f'<text x="{width}" y="{height - 6}" font-size="11" fill="#66707a" text-anchor="end">'
        f"{edges[-1]:.4g} {unit}</text>"
        f'<text x="{width / 2}" y="{height - 6}" font-size="11" fill="#66707a" text-anchor="middle">'
        f"area (max bin {top})</text></svg>"
    )


def _legend(colors: dict[str, tuple[int, int, int]]) -> str:
    return (
        '<div class="legend muted">'
        + "".join(
            f'<span style="background:{_rgb(c)}"></span>{_e(n)}' for n, c in sorted(colors.items())
        )
        + "</div>"
    )


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="n">{_num(v)}</td>' if i in numeric else f"<td>{v}</td>" for i, v in enumerate(r)
        ) + "</tr>"
        for r in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read_regions(fs: Any, root: str, image_id: str, run_id: str) -> pa.Table | None:
    from segpipe.tables._read import image_regions

    return image_regions(fs, root, image_id, run_id, ["label", "class", "area_px", "area_um2"])


def _pictures(
    results: str, row: dict[str, Any], regions: pa.Table | None, storage_options: dict[str, Any] | None,
    palette: dict[str, tuple[int, int, int]] | None = None,
) -> list[str]:  # fmt: skip
    """The ``<img>`` tags of a done image: its thumbnail, and with the label contours."""
    from segpipe.show import overlay_images

    image_id = row["image_id"]
    try:
        label_classes = None
        if regions is not None:
            label_classes = dict(zip(regions.column("label").to_pylist(),
                                     regions.column("class").to_pylist(), strict=True))  # fmt: skip
        uri = row.get("labels_uri")
        name = str(uri).rstrip("/").rsplit("/", 1)[-1] if uri else None
        plain, drawn, _ = overlay_images(results, image_id, label_name=name, max_size=THUMB_SIZE,
                                         label_classes=label_classes, storage_options=storage_options,
                                         palette=palette)  # fmt: skip
        return [f'<img class="thumb" alt="{_e(image_id)}" src="{_data_uri(plain)}">',
                f'<img class="overlay" alt="{_e(image_id)} with labels" src="{_data_uri(drawn)}">']  # fmt: skip
    except (OSError, ValueError, KeyError) as exc:  # a missing pyramid must not sink the report
        return [f'<div class="muted">no picture: {_e(" ".join(str(exc).split())[:200])}</div>']


def _image_section(
    row: dict[str, Any], regions: pa.Table | None, edges: np.ndarray | None, unit: str, pics: list[str],
    palette: dict[str, tuple[int, int, int]],
) -> str:  # fmt: skip
    image_id, status = row["image_id"], row["status"]
    parts = [f'<section class="image" id="img-{_e(image_id)}"><h3>{_e(image_id)} '
             f'<span class="status-{_e(status)}">{_e(status)}</span></h3>',
             f'<div class="muted">{_e(row.get("source_uri"))}</div>']  # fmt: skip
    if row.get("error"):
        parts.append(f'<div class="error">{_e(row["error"])}</div>')
    colors: dict[str, tuple[int, int, int]] = {}
    if regions is not None and regions.num_rows:  # the run's colours: one per class in the whole report
        colors = {c: palette[c] for c in sorted(set(regions.column("class").to_pylist()))}
    pics = list(pics)
    if regions is not None and edges is not None and regions.num_rows:
        col = "area_um2" if unit == "µm²" else "area_px"
        by_class: dict[str, list[float]] = {}
        for cls, area in zip(
            regions.column("class").to_pylist(), regions.column(col).to_pylist(), strict=True
        ):
            by_class.setdefault(cls, []).append(np.nan if area is None else area)
        pics.append('<div>' + histogram_svg({c: np.asarray(v) for c, v in by_class.items()}, edges, colors, unit)
                    + _legend(colors) + "</div>")  # fmt: skip
    if pics:
        parts.append('<div class="pics">' + "".join(pics) + "</div>")
    if regions is not None:
        counts: dict[str, int] = {}
        for cls in regions.column("class").to_pylist():
            counts[cls] = counts.get(cls, 0) + 1
        parts.append(
            _table(["class", "regions"], [[_e(c), n] for c, n in sorted(counts.items())], {1})
        )
    return "".join(parts) + "</section>"


def render_report(
    results: str | os.PathLike[str], run_id: str, storage_options: dict[str, Any] | None = None,
    client: Any = None,
) -> str:  # fmt: skip
    """The HTML of the report of run ``run_id`` (see :func:`write_report`)."""
    from segpipe.show import class_colors
    from segpipe.tables import open_results

    results = str(results)
    con = open_results(results, storage_options)
    try:
        runs = (
            con.sql("select * from runs where run_id = ?", params=[run_id])
            .to_arrow_table()
            .to_pylist()
        )
        images = (
            con.sql(
                "select * from images where run_id = ? order by status <> 'failed', image_id",
                params=[run_id],
            )
            .to_arrow_table()
            .to_pylist()
        )
        known = [
            r[0]
            for r in con.execute(
                "select run_id from runs order by started_at desc limit 5"
            ).fetchall()
        ]
    finally:
        con.close()
    if not runs and not images:
        raise ResultsError(
            f"run {run_id!r} is not in {results}; recent runs: {', '.join(known) or 'none'}"
        )
    run = runs[0] if runs else {"run_id": run_id, "status": "unknown"}
    fs, root = url_to_fs(results, storage_options)
    root = root.rstrip("/")
    done_ids = [r["image_id"] for r in images if r["status"] == "done"]
    with ThreadPoolExecutor(max_workers=8) as pool:  # one small file per image: read them at once
        regions = dict(zip(done_ids, pool.map(lambda i: _read_regions(fs, root, i, run_id), done_ids),
                           strict=True))  # fmt: skip
    # one colour per class for the whole report (histograms, legends, pictures)
    palette = class_colors({c for t in regions.values() if t is not None for c in t.column("class").unique().to_pylist()})
    # µm² only when every done image has a pixel size: otherwise those without one would
    # drop out of the run's statistics (their area_um2 is null)
    use_um = bool(done_ids) and all(r.get("mpp") for r in images if r["status"] == "done")
    unit, col = ("µm²", "area_um2") if use_um else ("px", "area_px")
    areas = np.concatenate([np.asarray(t.column(col).to_numpy(zero_copy_only=False), float)
                            for t in regions.values() if t is not None and t.num_rows] or [np.zeros(0)])  # fmt: skip
    areas = areas[np.isfinite(areas)]
    edges = (
        np.linspace(
            areas.min(), areas.max() if areas.max() > areas.min() else areas.min() + 1, N_BINS + 1
        )
        if areas.size
        else None
    )

    status_n = {
        s: sum(r["status"] == s for r in images) for s in ("done", "failed", "skipped", "running")
    }
    n_regions = sum(r.get("n_regions") or 0 for r in images if r["status"] == "done")
    cards = [("images", len(images)), ("done", status_n["done"]), ("failed", status_n["failed"]),
             ("skipped", status_n["skipped"]), ("regions", n_regions),
             ("duration", f"{run['duration_s']:.1f} s" if run.get("duration_s") is not None else "–")]  # fmt: skip
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        f"<title>segpipe run {_e(run_id)}</title><style>{_CSS}</style></head><body>",
        f'<h1>segpipe run {_e(run_id)} — <span class="status-{_e(run.get("status"))}">{_e(run.get("status"))}</span></h1>',
        f'<div class="muted">{_when(run.get("started_at"))} → {_when(run.get("finished_at"))} · '
        f"source {_e(run.get('source_uri'))} · results {_e(results)}</div>",
        '<div class="cards" id="summary">'
        + "".join(
            f'<div class="card"><b>{_num(v) if not isinstance(v, str) else _e(v)}</b><span>{_e(k)}</span></div>'
            for k, v in cards
        )
        + "</div>",  # fmt: skip
        _table(
            ["model", "weights sha256", "config hash", "segpipe", "cluster"],
            [
                [
                    _e(run.get("model")),
                    _e((run.get("model_sha256") or "")[:16]),
                    _e(run.get("config_hash")),
                    _e(run.get("segpipe_version")),
                    _e(run.get("cluster")),
                ]
            ],
        ),  # fmt: skip
    ]
    if run.get("error"):
        out.append(f'<div class="error">{_e(run["error"])}</div>')
    failed = [r for r in images if r["status"] == "failed"]
    out.append(f'<h2 id="failures">Failures ({len(failed)})</h2>')
    out.append(_table(["image", "source", "error"], [[_e(r["image_id"]), _e(r.get("source_uri")),
               f'<span class="error">{_e(r.get("error"))}</span>'] for r in failed]) if failed
               else '<div class="muted">none</div>')  # fmt: skip
    if edges is not None:
        by_class: dict[str, list[np.ndarray]] = {}
        for t in regions.values():
            if t is not None and t.num_rows:
                cls = np.asarray(t.column("class").to_pylist(), dtype=object)
                val = np.asarray(t.column(col).to_numpy(zero_copy_only=False), float)
                for c in set(cls):
                    by_class.setdefault(c, []).append(val[cls == c])
        colors = {c: palette[c] for c in sorted(by_class)}
        merged = {c: np.concatenate(v) for c, v in by_class.items()}
        out.append('<h2 id="classes">Regions per class</h2>')
        out.append(_table(["class", "regions", f"median area ({unit})", f"mean area ({unit})"],
                          [[_e(c), int(v.size), float(np.nanmedian(v)) if v.size else None,
                            float(np.nanmean(v)) if v.size else None] for c, v in sorted(merged.items())],
                          numeric={1, 2, 3}))  # fmt: skip
        out.append(f'<h2 id="histogram">Region areas ({unit})</h2>')
        out.append(histogram_svg({c: np.concatenate(v) for c, v in by_class.items()}, edges, colors, unit,
                                 width=720, height=180) + _legend(colors))  # fmt: skip
    timing_keys = sorted({k for r in images for k in dict(r.get("timings") or {})})
    out.append('<h2 id="timings">Timings (s)</h2>')
    if run.get("timings"):
        run_t = dict(run["timings"])
        out.append(
            _table(["run", *run_t], [[_e(run_id), *run_t.values()]], set(range(1, len(run_t) + 1)))
        )
    out.append(_table(["image", "status", "regions", "total", *timing_keys],
                      [[_e(r["image_id"]), _e(r["status"]), r.get("n_regions"), r.get("duration_s"),
                        *[dict(r.get("timings") or {}).get(k) for k in timing_keys]] for r in images],
                      numeric={2, 3, *range(4, 4 + len(timing_keys))}))  # fmt: skip
    out.append(f'<h2 id="images">Images ({len(images)})</h2>')
    drawn = [r for r in images[:MAX_IMAGES] if r["status"] == "done"]
    args = [(results, r, regions.get(r["image_id"]), storage_options, palette) for r in drawn]
    pics = None
    if client is not None and args:  # the run's workers are idle now, and hold no GIL of ours
        try:
            pics = client.gather([client.submit(_pictures, *a, pure=False) for a in args])
        except Exception as exc:  # a lost worker or cluster: draw them here instead
            log.warning("report pictures: the cluster failed (%s: %s); drawing them here",
                        type(exc).__name__, " ".join(str(exc).split())[:200])
    if pics is None:  # zarr reads, resizing and JPEG encoding release the GIL: draw a few at once
        with ThreadPoolExecutor(max_workers=min(4, max(1, len(args)))) as pool:
            pics = list(pool.map(lambda a: _pictures(*a), args))
    by_id = {r["image_id"]: p for r, p in zip(drawn, pics, strict=True)}
    out.extend(_image_section(r, regions.get(r["image_id"]), edges, unit, by_id.get(r["image_id"], []), palette)
               for r in images)  # fmt: skip
    if len(images) > MAX_IMAGES:
        out.append(
            f'<div class="muted">pictures shown for the first {MAX_IMAGES} images only</div>'
        )
    out.append("</body></html>")
    return "\n".join(out)


def write_report(
    results: str | os.PathLike[str], run_id: str, storage_options: dict[str, Any] | None = None,
    client: Any = None,
) -> str:  # fmt: skip
    """Write ``RESULTS/reports/<run_id>.html``: one self-contained page for a run.

    The page shows the run summary (counts, duration, model, weights hash, config hash),
    failures with their errors, an area histogram per class, per-stage timings and, per
    image, a thumbnail and the label contours coloured by class, its counts and histogram.

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL.
    run_id : str
        The run (``RESULTS/tables/runs/<run_id>.parquet`` or images rows of that run).
    storage_options : dict, optional
        fsspec options for remote results.
    client : distributed.Client, optional
        Draw the pictures on this cluster (a run's workers, idle once its images are done)
        instead of on threads here.

    Returns
    -------
    str
        URL of the HTML file.

    Raises
    ------
    ResultsError
        ``results`` is not a results folder or has no run ``run_id``.
    """
    from segpipe.tables._store import check_id, write_bytes_atomic

    check_id(run_id, "run_id")
    page = render_report(results, run_id, storage_options, client)
    url = join_url(str(results), "reports", f"{run_id}.html")
    fs, path = url_to_fs(url, storage_options)
    write_bytes_atomic(fs, path, page.encode("utf-8"))
    return url
