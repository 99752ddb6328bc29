"""One measured configuration per process: ``python -m benchmarks._child MODE [options]``.

Modes (each prints one ``BENCH-RESULT {json}`` line; times exclude start-up and imports):

* ``pipeline``   segpipe's per-image pipeline (ingest → segment → publish) on a Dask
                 LocalCluster started the way ``segpipe run`` starts it; a warm-up image
                 first, then ``--repeats`` timed runs.
* ``ingest``     ``segpipe.ingest.ingest_image`` only.
* ``model-only`` the network on tiles already in memory (``load_model(...).predict``).
* ``monai``      ``monai.inferers.sliding_window_inference`` over the image in memory, with
                 the plain ``nn.Module`` as a user would hand it (``--network plain``) or
                 segpipe's optimised copy, ``Model.inference_module`` (``--network optimised``).
* ``decode``     tifffile's raw decode of level 0, tile by tile.
* ``loop``       a plain Python loop: read PNG, ``segpipe.predict.segment_array``.
* ``cli``        the ``segpipe run`` command in a subprocess (Prefect, cluster and all).
* ``profile``    cProfile of ``segment_image`` in one process (client=None).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._harness import emit

IMAGE_ID = "bench"


# ---- helpers ------------------------------------------------------------------------------
def _read_level0(path: str) -> np.ndarray:
    """Level 0 of a TIFF as ``(C, Y, X)`` through segpipe's reader (same pixels both sides)."""
    from segpipe.io import open_image

    with open_image(path) as src:
        y, x = src.level_shapes[0]
        return np.asarray(src.read_region(0, 0, 0, y, x))


def _prepared(raw: np.ndarray, model: Any, modality: str) -> np.ndarray:
    """Normalised model input exactly as segpipe computes it (stats from a thumbnail)."""
    from segpipe.normalize import prepare, stats_from_image

    stats = stats_from_image(raw, model.card, modality)
    return prepare(raw, stats, model.card, modality)


def cut_tiles(x: np.ndarray, card: Any) -> np.ndarray:
    """``(C, Y, X)`` prepared input cut into the card's tiles (stride = tile − 2·halo),
    reflect-padded: what the network alone is timed on."""
    _, ny, nx = x.shape
    tile, halo, stride = card.tile, card.halo, card.stride
    rows, cols = -(-ny // stride), -(-nx // stride)
    pad = ((0, 0), (halo, rows * stride - ny + halo), (halo, cols * stride - nx + halo))
    xp = np.pad(x, pad, mode="reflect")
    return np.stack([
        xp[:, r * stride : r * stride + tile, c * stride : c * stride + tile]
        for r in range(rows) for c in range(cols)
    ])  # fmt: skip


def _modality(path: str) -> str:
    from segpipe.io import open_image

    with open_image(path) as src:
        return str(src.modality)


def _config(workers: int, threads: int) -> Any:
    from segpipe.config import load_config

    return load_config(None, {"run.n_workers": workers, "run.threads_per_worker": threads})


# ---- pipeline -----------------------------------------------------------------------------
def _run_image(
    source: str, results: str, model: str, config: Any, client: Any, api: str
) -> dict[str, Any]:
    """One image through the pipeline; returns stage timings (s) and counts."""
    shutil.rmtree(results, ignore_errors=True)
    Path(results).mkdir(parents=True)
    return _run_stages(source, results, model, config, client, api)


def _run_stages(
    source: str, results: str, model: str, config: Any, client: Any, api: str
) -> dict[str, Any]:
    start = {"t_start": time.time()}
    if api == "pipeline":
        from segpipe.pipeline import ModelRef, new_run_id, process_image

        out = process_image(
            source, IMAGE_ID, results, ModelRef(model), config, client, new_run_id()
        )
        if out.status != "done":
            raise RuntimeError(f"pipeline failed: {out.error}")
        t = dict(out.timings)
        return {
            "ingest": t.get("ingest", float("nan")),
            "segment": t.get("segment", float("nan")),
            "publish": t.get("publish", 0.0),
            "n_regions": out.n_regions,
            **_blocks(results),
            **start,
        }
    # direct: the same stages without the status rows (used when the pipeline module is not ready)
    from segpipe import tables
    from segpipe.infer import segment_image
    from segpipe.ingest import IngestSpec, ingest_image
    from segpipe.pipeline import image_url, new_run_id

    zarr_url = image_url(results, IMAGE_ID)
    t0 = time.perf_counter()
    ingest_image(source, zarr_url, IngestSpec(), client=client)
    t1 = time.perf_counter()
    res = segment_image(zarr_url, model, label_name="segmentation", client=client)
    t2 = time.perf_counter()
    tables.write_regions(results, IMAGE_ID, new_run_id(), res.columns)
    t3 = time.perf_counter()
    return {
        "ingest": t1 - t0,
        "segment": t2 - t1,
        "publish": t3 - t2,
        "n_regions": res.n_regions,
        "blocks_processed": res.blocks_processed,
        "blocks_total": res.blocks_total,
        "engine_timings": res.timings,
        **start,
    }


def _blocks(results: str) -> dict[str, Any]:
    """Blocks processed / total from the images table (the pipeline API records them)."""
    try:
        from segpipe.tables import open_results

        cur = open_results(results).execute("select * from images")
        names = [d[0] for d in cur.description]
        row = dict(zip(names, cur.fetchall()[-1], strict=False))
        return {k: row[k] for k in ("n_blocks", "n_blocks_total", "tissue_area_px") if k in row}
    except Exception as exc:  # bookkeeping only
        return {"blocks_note": f"{type(exc).__name__}: {exc}"[:200]}


def _warm_worker(model: str) -> None:
    """On each worker: load the model (cached per process), build its optimised network and
    import the post-processing, so no timed run pays a worker's first-use costs (the
    warm-up image is one block, which warms only one worker)."""
    import numpy as np

    import segpipe.infer  # noqa: F401
    import segpipe.postprocess  # noqa: F401
    from segpipe.models import load_model

    m = load_model(model, "cpu")
    m.predict(np.zeros((1, m.card.in_channels, 64, 64), np.float32))


def pipeline(a: argparse.Namespace) -> dict[str, Any]:
    from segpipe.pipeline import open_client

    config = _config(a.workers, a.threads)
    out = Path(a.out)
    t0 = time.perf_counter()
    with open_client(config) as client:
        startup = time.perf_counter() - t0
        try:  # load the model once per worker up front (load_model caches it per process)
            client.run(_warm_worker, a.model)
        except Exception as exc:
            print(f"preload failed: {exc}", file=sys.stderr)
        api = a.api
        if a.warmup:
            t = time.perf_counter()
            if api == "auto":
                try:
                    _run_image(a.warmup, str(out / "warmup"), a.model, config, client, "pipeline")
                    api = "pipeline"
                except Exception as exc:
                    print(
                        f"pipeline API failed ({type(exc).__name__}: {exc}); using the stages directly",
                        file=sys.stderr,
                    )
                    api = "direct"
                    _run_image(a.warmup, str(out / "warmup"), a.model, config, client, api)
            else:
                _run_image(a.warmup, str(out / "warmup"), a.model, config, client, api)
            warm = time.perf_counter() - t
        else:
            warm = 0.0
            api = "pipeline" if api == "auto" else api
        runs = []
        for r in range(a.repeats):
            t = time.perf_counter()
            info = _run_image(a.source, str(out / f"r{r}"), a.model, config, client, api)
            info["total"] = time.perf_counter() - t
            runs.append(info)
            print(f"run {r}: {info}", file=sys.stderr, flush=True)
            if not a.keep:
                shutil.rmtree(out / f"r{r}", ignore_errors=True)
    return {"api": api, "startup_s": startup, "warmup_s": warm, "runs": runs, "workers": a.workers}


def ingest(a: argparse.Namespace) -> dict[str, Any]:
    from segpipe.ingest import IngestSpec, ingest_image
    from segpipe.pipeline import open_client

    config = _config(a.workers, a.threads)
    runs = []
    with open_client(config) as client:
        if a.warmup:  # workers import the readers / codecs and open a source once
            url = str(Path(a.out) / "warmup.ome.zarr")
            ingest_image(a.warmup, url, IngestSpec(), client=client)
            shutil.rmtree(url, ignore_errors=True)
        for r in range(a.repeats):
            url = str(Path(a.out) / f"r{r}.ome.zarr")
            t = time.perf_counter()
            meta = ingest_image(a.source, url, IngestSpec(), client=client)
            runs.append({"seconds": time.perf_counter() - t, "shape": list(meta.shape)})
            shutil.rmtree(url, ignore_errors=True)
    return {"runs": runs}


# ---- in-memory references -----------------------------------------------------------------
def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def model_only(a: argparse.Namespace) -> dict[str, Any]:
    """The network alone on the slide's tiles, already cut and in memory.

    Through ``load_model(...).predict``: the same inference-optimised network
    (``Model.inference_module``: BatchNorm folded, channels_last) the pipeline runs."""
    from segpipe.models import load_model

    _threads(a.threads)
    model = load_model(a.model, device="cpu")
    card = model.card
    raw = _read_level0(a.source)
    x = _prepared(raw, model, _modality(a.source))
    _, ny, nx = x.shape
    tiles = cut_tiles(x, card)
    del x, raw
    model.predict(tiles[: a.batch])  # warm-up (a full batch: the shapes the runs use)
    runs = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        for i in range(0, len(tiles), a.batch):
            model.predict(tiles[i : i + a.batch])
        runs.append(time.perf_counter() - t)
    return {
        "runs": runs,
        "pixels": ny * nx,
        "n_tiles": len(tiles),
        "tile": card.tile,
        "stride": card.stride,
        "threads": a.threads,
    }


def monai(a: argparse.Namespace) -> dict[str, Any]:
    """MONAI's sliding-window inference, same network / tile / overlap / batch, in memory.

    ``--network plain``: ``model.module``, the ``nn.Module`` a user would hand MONAI.
    ``--network optimised``: ``model.inference_module`` (segpipe's BatchNorm-folded,
    channels_last copy) with channels_last input, so the comparison separates the network's
    execution from the pipeline around it."""
    import torch
    from monai.inferers import sliding_window_inference

    from segpipe.models import load_model

    _threads(a.threads)
    model = load_model(a.model, device="cpu")
    card = model.card
    raw = _read_level0(a.source)
    modality = _modality(a.source)
    # MONAI scans with interval int(roi * (1 - overlap)); this overlap makes it exactly the
    # stride segpipe uses (tile - 2 * halo), so both sides predict the same number of tiles.
    overlap = 1.0 - (card.stride + 0.5) / card.tile
    if a.network == "optimised":
        fast = model.inference_module
        cl = torch.channels_last if model.channels_last else torch.contiguous_format

        def module(x: torch.Tensor) -> torch.Tensor:
            return fast(x.contiguous(memory_format=cl))
    else:
        module = model.module
    with torch.inference_mode():
        module(torch.zeros(1, card.in_channels, card.tile, card.tile))  # warm-up
    runs, prep = [], []
    for _ in range(a.repeats):
        t = time.perf_counter()
        x = torch.from_numpy(_prepared(raw, model, modality))[None]
        t1 = time.perf_counter()
        with torch.inference_mode():
            logits = sliding_window_inference(
                x,
                roi_size=(card.tile, card.tile),
                sw_batch_size=a.batch,
                predictor=module,
                overlap=overlap,
                mode="constant",
            )
            probs = torch.sigmoid(logits) if card.task == "binary" else torch.softmax(logits, dim=1)
        runs.append(time.perf_counter() - t)
        prep.append(t1 - t)
        del x, logits, probs
    return {
        "runs": runs,
        "prepare": prep,
        "pixels": int(raw.shape[1] * raw.shape[2]),
        "overlap": overlap,
        "threads": a.threads,
        "network": a.network,
    }


def decode(a: argparse.Namespace) -> dict[str, Any]:
    """tifffile reading + decoding every level-0 tile in ONE thread, nothing kept.

    Uses ``raw_decode`` of the io owner's ``benchmarks/bench_ingest.py`` (same definition
    as its standalone ingest benchmark); compare with ingest throughput *per worker*.
    """
    try:
        from benchmarks.bench_ingest import raw_decode
    except ImportError:  # pragma: no cover - the io owner's script is absent
        import tifffile

        def raw_decode(path: Path) -> float:
            t = time.perf_counter()
            with tifffile.TiffFile(path) as tif:
                for _ in tif.pages[0].segments(maxworkers=1):
                    pass
            return time.perf_counter() - t

    return {"runs": [raw_decode(Path(a.source)) for _ in range(a.repeats)], "threads": 1}


def loop(a: argparse.Namespace) -> dict[str, Any]:
    """What a user would write without segpipe's orchestration: a loop over the files."""
    from PIL import Image

    from segpipe.models import load_model
    from segpipe.predict import segment_array

    files = sorted(Path(a.source).glob("*.png"))
    model = load_model(a.model, device="cpu")
    segment_array(np.asarray(Image.open(files[0])), model=model)  # warm-up
    runs = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        n = 0
        for f in files:
            n += int(segment_array(np.asarray(Image.open(f)), model=model).max() > 0)
        runs.append(time.perf_counter() - t)
    return {"runs": runs, "n_images": len(files)}


_LOOP_SCRIPT = """
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.models import load_model
from segpipe.predict import segment_array

model = load_model(sys.argv[2], device="cpu")
for f in sorted(Path(sys.argv[1]).glob("*.png")):
    segment_array(np.asarray(Image.open(f)), model=model)
"""


def loop_script(a: argparse.Namespace) -> dict[str, Any]:
    """The plain loop as the whole script a user runs: interpreter start, imports, model load
    and the loop, timed from outside like ``segpipe run`` (:func:`cli`)."""
    runs = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", _LOOP_SCRIPT, a.source, a.model], check=True)
        runs.append(time.perf_counter() - t)
    return {"runs": runs}


def work(a: argparse.Namespace) -> dict[str, Any]:
    """segpipe's per-image work without its orchestration: :func:`process_image` of each
    file in a plain loop, one process, no Prefect, no Dask cluster (``--images`` first files)."""
    import shutil

    import dask

    from segpipe.config import load_config
    from segpipe.pipeline import process_image, resolve_model
    from segpipe.tables import init_results

    files = sorted(Path(a.source).glob("*.png"))[: a.images or None]
    config = load_config(None, {})
    ref = resolve_model(a.model)
    out = Path(a.out)
    runs = []
    with dask.config.set(scheduler="sync"):
        for i in range(a.repeats + 1):  # the first pass warms up
            shutil.rmtree(out, ignore_errors=True)
            init_results(str(out))
            t = time.perf_counter()
            for f in files:
                outcome = process_image(str(f), f.stem, str(out), ref, config, None, "bench")
                if outcome.status != "done":
                    raise RuntimeError(f"{f}: {outcome.error}")
            if i:
                runs.append(time.perf_counter() - t)
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)
    return {"runs": runs, "n_images": len(files)}


def cli(a: argparse.Namespace) -> dict[str, Any]:
    """``segpipe run SOURCE --out RESULTS --model M`` in a subprocess (the user's command)."""
    cmd = [
        sys.executable,
        "-c",
        "from segpipe.cli import main; main()",
        "run",
        a.source,
        "--out",
        a.out,
        "--model",
        a.model,
        "--workers",
        str(a.workers),
        *a.extra,
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    seconds = time.perf_counter() - t
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    if proc.returncode not in (0,):
        raise RuntimeError(
            f"segpipe run exited {proc.returncode}: {(proc.stdout + proc.stderr)[-600:]}"
        )
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("run ")]
    return {"seconds": seconds, "summary": summary[-1] if summary else proc.stdout[-300:]}


def profile(a: argparse.Namespace) -> dict[str, Any]:
    """cProfile of one image's segmentation in this process (the Dask tasks' code, serially)."""
    import cProfile
    import io
    import pstats

    import segpipe.infer._tasks
    from segpipe.infer import segment_image
    from segpipe.ingest import IngestSpec, ingest_image

    _threads(a.threads)
    # cProfile sees only its own thread: run pass 1's read-ahead and finishing (post-
    # processing, stitch records, statistics, writes) inline, so they are profiled too
    segpipe.infer._tasks.ThreadPoolExecutor = segpipe.infer._tasks._InlineExecutor  # type: ignore[misc]
    url = str(Path(a.out) / "profile.ome.zarr")
    ingest_image(a.source, url, IngestSpec())
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    res = segment_image(url, a.model, label_name="segmentation", client=None)
    prof.disable()
    seconds = time.perf_counter() - t
    stats = pstats.Stats(prof)
    top = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        top.append(
            {
                "function": f"{Path(file).name}:{line}({fn})",
                "tottime": tt,
                "cumtime": ct,
                "calls": nc,
            }
        )
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(40)
    sys.stderr.write(buf.getvalue())
    shutil.rmtree(url, ignore_errors=True)
    return {
        "seconds": seconds,
        "engine_timings": res.timings,
        "by_tottime": sorted(top, key=lambda r: -r["tottime"])[:25],
        "by_cumtime": sorted(top, key=lambda r: -r["cumtime"])[:300],
    }


MODES = {
    "pipeline": pipeline,
    "ingest": ingest,
    "model-only": model_only,
    "monai": monai,
    "decode": decode,
    "loop": loop,
    "loop_script": loop_script,
    "cli": cli,
    "work": work,
    "profile": profile,
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks._child")
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--source", required=True)
    p.add_argument("--out", default="bench-work/out")
    p.add_argument("--model", default="classical")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--images", type=int, default=0, help="work mode: only the first N files")
    p.add_argument("--warmup", default=None)
    p.add_argument("--api", choices=("auto", "pipeline", "direct"), default="auto")
    p.add_argument(
        "--network",
        choices=("plain", "optimised"),
        default="plain",
        help="monai mode: the plain nn.Module or segpipe's Model.inference_module.",
    )
    p.add_argument("--keep", action="store_true")
    p.add_argument("extra", nargs="*", help="cli mode: extra `segpipe run` options (after --)")
    a = p.parse_args(argv)
    emit(MODES[a.mode](a))


if __name__ == "__main__":
    main()
