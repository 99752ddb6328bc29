"""A small synthetic archive: slides and industrial images, ground truth in a parallel folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segpipe.synthetic._industrial import write_industrial
from segpipe.synthetic._noise import sub_seed
from segpipe.synthetic._slide import write_slide


@dataclass(frozen=True)
class ArchiveItem:
    """One image of a synthetic archive.

    ``kind`` is ``"he"``, ``"fluorescence"`` or ``"industrial"``; ``relpath`` is the image path
    relative to the archive folder; ``mpp`` is None for industrial images.
    """

    image: Path
    truth: Path
    kind: str
    mpp: float | None
    relpath: str


@dataclass(frozen=True)
class ArchiveInfo:
    """What :func:`make_archive` wrote: ``archive`` (images only), ``truth`` and the items."""

    root: Path
    archive: Path
    truth: Path
    items: list[ArchiveItem] = field(default_factory=list)

    def by_kind(self, kind: str) -> list[ArchiveItem]:
        """The items of one kind."""
        return [item for item in self.items if item.kind == kind]


def truth_path(truth_dir: Path, relpath: str) -> Path:
    """``truth/<relpath with its suffixes replaced by .labels.tif>``."""
    rel = Path(relpath)
    return truth_dir / rel.parent / (rel.name.split(".")[0] + ".labels.tif")


def make_archive(
    out_dir: str | Path,
    n_he: int = 1,
    n_fluorescence: int = 1,
    n_industrial: int = 1,
    slide_shape: tuple[int, int] = (3000, 3000),
    industrial_shape: tuple[int, int] = (1500, 2000),
    seed: int = 0,
    mpp: float = 0.5,
    tissue_fraction: float = 0.4,
) -> ArchiveInfo:
    """Write a synthetic archive for the demo, tests and benchmarks.

    Layout::

        out_dir/archive/slides/he_000.svs, slides/fluo_000.svs, industrial/part_000.png
        out_dir/truth/slides/he_000.labels.tif, ...   (same relative paths, .labels.tif)

    Discovering ``out_dir/archive`` never sees the ground truth. Slides carry nucleus
    instance labels (uint32), industrial images a defect class map (uint8, indices into
    ``DEFECT_CLASSES``). Every image has its own seed derived from ``seed``.

    Returns
    -------
    ArchiveInfo
    """
    root = Path(out_dir)
    archive, truth = root / "archive", root / "truth"
    items: list[ArchiveItem] = []
    for kind, count, prefix in (("he", n_he, "he"), ("fluorescence", n_fluorescence, "fluo")):
        for i in range(count):
            rel = f"slides/{prefix}_{i:03d}.svs"
            info = write_slide(
                archive / rel,
                slide_shape,
                kind=kind,
                seed=sub_seed(seed, 100 + len(items)),
                tissue_fraction=tissue_fraction,
                mpp=mpp,
                labels_path=truth_path(truth, rel),
            )
            items.append(ArchiveItem(info.path, info.labels_path, kind, mpp, rel))
    for i in range(n_industrial):
        rel = f"industrial/part_{i:03d}.png"
        info = write_industrial(
            archive / rel,
            industrial_shape,
            seed=sub_seed(seed, 200 + i),
            fmt="png",
            labels_path=truth_path(truth, rel),
        )
        items.append(ArchiveItem(info.path, info.labels_path, "industrial", None, rel))
    return ArchiveInfo(root, archive, truth, items)
