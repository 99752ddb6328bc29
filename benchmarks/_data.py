"""Benchmark inputs, made once and reused: the model, synthetic slides, mosaics, PNG archives.

Everything is seeded, so both sides of a comparison (and two runs on two machines) see
the same pixels. Files go under the work directory (default ``./bench-work``); a file is
only reused when its ``.done`` marker exists, so an interrupted write is redone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BenchModel", "bench_model", "mosaic_slide", "png_archive", "synthetic_slide"]

SEED = 0
MPP = 0.5  # µm/px of every synthetic input = the nuclei card's, so nothing is resampled


@dataclass(frozen=True)
class BenchModel:
    """The network both sides of a comparison run.

    Attributes
    ----------
    spec : str
        What segpipe is given (a built-in name or a weights path).
    label : str
        How docs/benchmarks.md names it.
    """

    spec: str
    label: str


def _done(path: Path) -> Path:
    return path.with_name(path.name + ".done")


def _fresh(path: Path) -> bool:
    return path.exists() and _done(path).exists()


def _mark(path: Path, info: dict) -> None:
    _done(path).write_text(json.dumps(info, default=str))


def bench_model(workdir: Path, choice: str = "auto") -> BenchModel:
    """The model to benchmark.

    ``auto``: the built-in ``nuclei`` when its weights are installed; otherwise the same
    network — the light U-Net of the ``nuclei`` card — with seeded random weights, saved
    with :func:`segpipe.models.save_model` (speed does not depend on the weights).
    ``classical`` or any other name / path is used as given.
    """
    from segpipe.models import is_installed

    if choice == "auto":
        if is_installed("nuclei"):
            return BenchModel("nuclei", "nuclei (trained weights)")
        choice = "unet-random"
    if choice == "unet-random":
        import torch

        from segpipe.models import BUILTIN_CARDS, build_module, save_model

        card = BUILTIN_CARDS["nuclei"]
        path = workdir / "models" / "nuclei-light-random.safetensors"
        if not _fresh(path):
            torch.manual_seed(SEED)
            module = build_module(card)
            path = save_model(module, card, path)
            _mark(path, {"card": card.name})
        arch = card.architecture
        return BenchModel(
            str(path),
            f"light U-Net ({arch.get('preset')}) of the nuclei card, random weights, tile {card.tile}, halo {card.halo}",
        )
    if choice == "classical":
        return BenchModel(
            "classical", "classical (Gaussian + threshold, a torch module without weights)"
        )
    return BenchModel(choice, choice)


def synthetic_slide(
    workdir: Path, size: int, tissue: float, kind: str = "fluorescence", seed: int = SEED
) -> Path:
    """A square synthetic slide from :func:`segpipe.synthetic.write_slide` (cached).

    ``kind="fluorescence"``: grey nuclei on dark glass (one uint8 channel). ``tissue`` is
    the fraction of the slide covered by tissue (1.0 = fully tissue).
    """
    from segpipe.synthetic import write_slide

    folder = workdir / "slides"
    path = folder / f"slide_{kind}_{size}_t{round(tissue * 100)}_s{seed}.tif"
    if _fresh(path):
        return path
    t0 = time.perf_counter()
    info = write_slide(
        path,
        (size, size),
        kind=kind,
        seed=seed,
        tissue_fraction=tissue,
        mpp=MPP,
        labels_path=folder / f"slide_{kind}_{size}_t{round(tissue * 100)}_s{seed}_labels.tif",
    )
    _mark(
        path,
        {
            "seconds": time.perf_counter() - t0,
            "tissue_fraction": info.tissue_fraction,
            "n_nuclei": info.n_nuclei,
        },
    )
    print(
        f"  wrote {path.name} ({size}² px, tissue {info.tissue_fraction:.2f}) in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return path


def mosaic_slide(
    workdir: Path,
    size: int,
    patch: int = 2048,
    tile: int = 256,
    seed: int = SEED,
    sparse: bool = False,
) -> Path:
    """A square slide of any size, written tile by tile as a tiled BigTIFF.

    ``sparse=False``: fully tissue. ``sparse=True``: only patches with even row and column
    index hold tissue (25 % of the slide, the same pattern at every size), the others are
    blank glass at the patch's background level — the tissue mask skips them.

    One ``patch``² fully-tissue fluorescence region is rendered by
    :class:`segpipe.synthetic.SyntheticSlide`; the slide repeats its 8 flips / transposes
    in a fixed pattern. Rendering a 32k² slide nucleus by nucleus would take ~15 min on
    one core; the mosaic gives slides of every size the same content statistics (so
    memory can be compared across sizes) in the time it takes to compress them. Memory
    stays at a few patches whatever the size. Level 0 only (zlib, like ``write_slide``; the
    pixel type is the renderer's, uint16 for fluorescence):
    ingest builds the pyramid itself.
    """
    from segpipe.synthetic import write_mosaic

    name = f"mosaic_{size}_p{patch}_s{seed}" + ("_sparse" if sparse else "")
    path = workdir / "slides" / f"{name}.tif"
    if _fresh(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".tmp")
    write_mosaic(tmp, size, patch=patch, tile=tile, seed=seed, sparse=sparse, mpp=MPP,
                 description=f"segpipe benchmark mosaic {size}x{size}")  # fmt: skip
    tmp.replace(path)
    _mark(path, {"seconds": time.perf_counter() - t0})
    print(
        f"  wrote {path.name} ({size}² px mosaic) in {time.perf_counter() - t0:.0f} s", flush=True
    )
    return path


def png_archive(workdir: Path, n: int, size: int, seed: int = SEED) -> Path:
    """A folder of ``n`` grey ``size``² PNGs of synthetic nuclei (cached).

    Eight seeded :func:`segpipe.synthetic.nuclei_sample` images are made; image ``i`` is
    sample ``i % 8`` rolled by a seeded offset, so every file differs but costs the same.
    """
    from PIL import Image

    from segpipe.synthetic import nuclei_sample

    folder = workdir / "archives" / f"png_{n}x{size}_s{seed}"
    marker = folder / ".done"
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    bases = [nuclei_sample((size, size), seed * 1000 + k, "fluorescence")[0] for k in range(8)]
    for i in range(n):
        img = np.asarray(bases[i % 8])
        img = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
        img = np.roll(img, (int(rng.integers(size)), int(rng.integers(size))), axis=(0, 1))
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"img_{i:04d}.png")
    marker.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    print(f"  wrote {n} PNGs of {size}² px in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder
