"""Stitching: tiled labels equal whole-image labels, across block faces and corners.

Two kinds of segmenter are tiled:

* the ``classical`` model through :func:`segpipe.predict.segment_window` (pointwise but
  for a small Gaussian, then connected components) when the models owner's module is
  importable, and always a local pointwise stand-in (Gaussian + threshold + connected
  components, in this file only);
* watershed post-processing (``classical-watershed``, and a local stand-in), which is
  not local: objects smaller than the halo must be reproduced exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.draw import line
from skimage.feature import peak_local_max
from skimage.measure import label
from skimage.segmentation import watershed

from segpipe.postprocess import CONNECTIVITY
from segpipe.stitch import apply_relabel, label_tiled, pair_coords, plan, provisional_block
from segpipe.tiling import BlockGrid

SIGMA = 1.0  # stand-in Gaussian: truncate=3 -> radius 3
RADIUS = 3
CONNS = pytest.mark.parametrize("conn", [1, 2])


# -- helpers -------------------------------------------------------------------------------


def assert_same_partition(tiled: np.ndarray, whole: np.ndarray) -> None:
    """Both label images have the same foreground and a one-to-one id correspondence."""
    np.testing.assert_array_equal(tiled > 0, whole > 0)
    fg = whole > 0
    pairs = np.unique(np.stack([tiled[fg], whole[fg]]), axis=1)
    n_tiled = len(np.unique(tiled[fg]))
    n_whole = len(np.unique(whole[fg]))
    assert pairs.shape[1] == n_tiled == n_whole, (
        f"{pairs.shape[1]} id pairs for {n_tiled} tiled and {n_whole} whole-image objects"
    )


def blob_image(seed: int, shape: tuple[int, int], snakes: int = 2) -> np.ndarray:
    """Float image in [0, 1]: smooth random blobs plus thin snakes spanning the image."""
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.random(shape), 2.5)
    img = (img - img.min()) / max(img.max() - img.min(), 1e-9)
    for _ in range(snakes):
        pts = rng.integers(0, [shape[0], shape[1]], size=(4, 2))
        for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:], strict=True):
            rr, cc = line(int(y0), int(x0), int(y1), int(x1))
            img[rr, cc] = 1.0
            img[np.clip(rr + 1, 0, shape[0] - 1), cc] = 1.0
    return img


def pointwise(img: np.ndarray, conn: int = CONNECTIVITY) -> Callable[[tuple[int, int, int, int]], np.ndarray]:
    """Stand-in for the classical model on a window: Gaussian, threshold, 8-connected CC."""

    def segment(region: tuple[int, int, int, int]) -> np.ndarray:
        y0, x0, y1, x1 = region
        smooth = ndi.gaussian_filter(img[y0:y1, x0:x1], SIGMA, truncate=3.0, mode="reflect")
        clear_edges(smooth, region, img.shape)
        return label(smooth > 0.6, connectivity=conn)

    return segment


def clear_edges(values: np.ndarray, region: tuple[int, int, int, int], shape: tuple[int, ...]) -> None:
    """As the engine does (``infer._clear_edges``): the RADIUS px of a window edge inside the
    image saw reflected padding, not the image; they become background. Kept, they can
    join two objects of the core that the whole image keeps apart (seed 1550 below)."""
    y0, x0, y1, x1 = region
    if y0 > 0:
        values[:RADIUS] = 0
    if y1 < shape[0]:
        values[-RADIUS:] = 0
    if x0 > 0:
        values[:, :RADIUS] = 0
    if x1 < shape[1]:
        values[:, -RADIUS:] = 0


def watershed_segmenter(
    img: np.ndarray, conn: int = CONNECTIVITY
) -> Callable[[tuple[int, int, int, int]], np.ndarray]:
    """Stand-in for classical-watershed: split touching blobs at distance-transform peaks.

    Watershed breaks ties (plateaus of the distance map) by flooding order, which depends
    on marker numbering and so on where the window starts; a tiny, globally defined
    tie-breaker makes the landscape tie-free so a window reproduces the whole image.
    """
    tie = np.random.default_rng(12345).random(img.shape) * 1e-3

    def segment(region: tuple[int, int, int, int]) -> np.ndarray:
        y0, x0, y1, x1 = region
        smooth = ndi.gaussian_filter(img[y0:y1, x0:x1], SIGMA, truncate=3.0, mode="reflect")
        mask = smooth > 0.55
        cc = label(mask, connectivity=conn)
        dist = ndi.distance_transform_edt(mask)
        peaks = peak_local_max(dist, min_distance=3, labels=cc, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        markers = label(markers > 0, connectivity=2)  # plateaus give one seed
        labels = watershed(-dist + tie[y0:y1, x0:x1], markers, mask=mask, connectivity=conn)
        return label(labels, connectivity=conn)  # a watershed basin can be disconnected

    return segment


def nuclei_image(seed: int, shape: tuple[int, int], n: int = 25) -> np.ndarray:
    """Float image: pairs of overlapping discs (touching nuclei) and a few long bars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(2.5, 3.8)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
        if rng.random() < 0.6:  # a touching partner
            a = rng.uniform(0, 2 * np.pi)
            cy2, cx2 = cy + 1.6 * r * np.sin(a), cx + 1.6 * r * np.cos(a)
            img[(yy - cy2) ** 2 + (xx - cx2) ** 2 <= r * r] = 1.0
    img[shape[0] // 2, 5:-5] = 1.0  # an object larger than any halo
    return img


def whole(segment: Callable, shape: tuple[int, int]) -> np.ndarray:
    return segment((0, 0, shape[0], shape[1]))


# -- geometry --------------------------------------------------------------------------------


def test_pair_coords_are_adjacent_and_symmetric() -> None:
    grid = BlockGrid((13, 11), (4, 5), 2)
    for b in grid.blocks():
        for n in grid.neighbours(b):
            pb, pn = pair_coords(grid, b, n, 2)
            qn, qb = pair_coords(grid, n, b, 2)
            np.testing.assert_array_equal(pb, qb)
            np.testing.assert_array_equal(pn, qn)
            assert (np.abs(pb - pn).max(axis=1) == 1).all()
            assert all(grid.block_of(*p) == b for p in pb)
            assert all(grid.block_of(*q) == n for q in pn)
    # a face of length 4 has 4 + 2*3 = 10 pairs, a corner exactly one
    assert len(pair_coords(grid, (1, 1), (1, 2), 2)[0]) == 10
    assert len(pair_coords(grid, (1, 1), (2, 2), 2)[0]) == 1
    # 4-connectivity: only the pixels facing each other, no corner pairs
    assert len(pair_coords(grid, (1, 1), (1, 2), 1)[0]) == 4
    assert len(pair_coords(grid, (1, 1), (2, 2), 1)[0]) == 0


@CONNS
def test_every_adjacent_pixel_pair_across_blocks_is_listed_once(conn: int) -> None:
    grid = BlockGrid((9, 10), (3, 4), 1)
    listed = set()
    for b in grid.blocks():
        for n in grid.neighbours(b):
            if n > b:
                pb, pn = pair_coords(grid, b, n, conn)
                listed |= {(tuple(p), tuple(q)) for p, q in zip(pb, pn, strict=True)}
    expected = set()
    for y in range(9):
        for x in range(10):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if abs(dy) + abs(dx) > conn:
                        continue
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < 9 and 0 <= q[1] < 10:
                        a, c = grid.block_of(y, x), grid.block_of(*q)
                        if a < c:
                            expected.add(((y, x), q))
    assert listed == expected


# -- pointwise + connected components: exact -----------------------------------------------


@CONNS
@pytest.mark.parametrize(
    ("shape", "block", "halo"),
    [((61, 67), (16, 16), 5), ((61, 67), (7, 9), 4), ((50, 43), (25, 21), 8), ((33, 35), 5, 6)],
)
def test_pointwise_tiled_equals_whole_image(shape, block, halo, conn) -> None:
    img = blob_image(1, shape)
    seg = pointwise(img, conn)
    grid = BlockGrid(shape, block, halo)
    tiled = label_tiled(seg, grid, connectivity=conn)
    ref = whole(seg, shape)
    assert_same_partition(tiled, ref)
    # the snakes are larger than the halo and span many blocks, yet stay one object each
    big = [r for r in np.unique(ref[ref > 0]) if np.ptp(np.argwhere(ref == r), axis=0).max() > 2 * halo]
    assert big, "the test image should hold objects larger than the halo"


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    sy=st.integers(20, 57),
    sx=st.integers(20, 57),
    by=st.integers(4, 19),
    bx=st.integers(4, 19),
    extra=st.integers(1, 4),
    conn=st.sampled_from([1, 2]),
)
@example(seed=1550, sy=43, sx=28, by=4, bx=10, extra=1, conn=1)  # merged two objects before clear_edges
def test_pointwise_tiled_equals_whole_image_property(seed, sy, sx, by, bx, extra, conn) -> None:
    img = blob_image(seed, (sy, sx), snakes=1)
    seg = pointwise(img, conn)
    tiled = label_tiled(seg, BlockGrid((sy, sx), (by, bx), RADIUS + extra), connectivity=conn)
    ref = whole(seg, (sy, sx))
    assert_same_partition(tiled, ref)
    ids = tiled[tiled > 0]
    assert len(np.unique(ids)) == len(np.unique(ref[ref > 0]))  # ids unique after stitching


@CONNS
def test_objects_on_block_corners_and_u_shapes(conn: int) -> None:
    """Objects touching only diagonally across a corner, and one joined only in the halo."""
    img = np.zeros((20, 20))
    img[8:10, 8:10] = 1  # a square on the corner of four 9×9 blocks... (corner at 9, 9)
    img[3, 8] = img[2, 9] = 1  # diagonal step across the vertical border at x = 9
    img[12:18, 2] = img[12:18, 6] = img[17, 2:7] = 1  # a U whose bottom lies in the next row
    grid = BlockGrid((20, 20), 9, 4)

    def seg(region):
        y0, x0, y1, x1 = region
        return label(img[y0:y1, x0:x1] > 0, connectivity=conn)

    tiled = label_tiled(seg, grid, connectivity=conn)
    assert_same_partition(tiled, label(img > 0, connectivity=conn))


def test_touching_but_distinct_objects_stay_apart() -> None:
    """Two instances that touch across a border are not merged when both windows split them."""
    labels_whole = np.zeros((12, 12), np.int32)
    labels_whole[2:10, 3:6] = 1  # object 1 crosses the horizontal border y = 6
    labels_whole[2:10, 6:9] = 2  # object 2 touches it all along x = 5 | 6 and crosses too
    grid = BlockGrid((12, 12), 6, 6)
    tiled = label_tiled(lambda r: labels_whole[r[0] : r[2], r[1] : r[3]], grid)
    assert_same_partition(tiled, labels_whole)


def test_majority_vote_rule() -> None:
    """A merge needs more than half of the votes of both windows over all touching pairs."""
    grid = BlockGrid((4, 4), (4, 2), 2)  # two blocks side by side, border between x=1 | x=2
    left = np.array([[1, 1, 1, 1]] * 4)
    right_disagrees = np.array([[1, 1, 2, 2]] * 4)  # right window splits at the border
    _, rec_l, _ = provisional_block(left, grid, (0, 0), connectivity=1)
    _, rec_r, _ = provisional_block(right_disagrees, grid, (0, 1), connectivity=1)
    # left votes "same" on all 4 pairs, right on none: 4 votes for 4 pairs -> no merge
    assert plan([rec_l, rec_r]).remaps == {}
    _, rec_r2, _ = provisional_block(left, grid, (0, 1), connectivity=1)
    relabel = plan([rec_l, rec_r2])
    assert relabel.remaps == {(0, 1): {1: 1}} and relabel.n_regions == 1


def test_semantic_same_requires_same_class() -> None:
    labels_w = np.ones((4, 4), np.int32)
    classes = np.array([[1, 1, 2, 2]] * 4)  # one window label but two classes at the border
    grid = BlockGrid((4, 4), (4, 2), 2)
    _, rec_l, _ = provisional_block(labels_w, grid, (0, 0), classes)
    _, rec_r, _ = provisional_block(labels_w, grid, (0, 1), classes)
    assert plan([rec_l, rec_r]).n_regions == 2


def test_apply_relabel_offsets_and_remaps() -> None:
    prov = np.array([[0, 1, 2], [3, 0, 2]], np.uint32)
    out = apply_relabel(prov, 10, {2: 4})
    np.testing.assert_array_equal(out, [[0, 11, 4], [13, 0, 4]])
    assert out.dtype == np.uint32


def test_skipped_blocks_stay_zero_and_records_are_small() -> None:
    img = blob_image(3, (40, 40))
    seg = pointwise(img)
    grid = BlockGrid((40, 40), 10, 5)
    keep = [b for b in grid.blocks() if b != (1, 1)]
    tiled = label_tiled(seg, grid, blocks=keep)
    assert not tiled[10:20, 10:20].any()
    # a record carries at most the border pairs of its core (3 per edge pixel + corners)
    _, rec, _ = provisional_block(seg(grid.window((1, 1))), grid, (1, 1))
    assert sum(len(f.pair) for f in rec.faces.values()) <= 4 * (3 * 10 - 2) + 4


# -- watershed: objects smaller than the halo are exact ------------------------------------


def small_blob_objects(ref: np.ndarray, mask: np.ndarray, limit: int, conn: int) -> np.ndarray:
    """Pixels of the connected foreground components whose bbox extent is below ``limit``."""
    cc = label(mask, connectivity=conn)
    keep = np.zeros(mask.shape, bool)
    for sl, i in zip(ndi.find_objects(cc), range(1, cc.max() + 1), strict=True):
        if sl is not None and max(s.stop - s.start for s in sl) < limit:
            keep |= cc == i
    return keep


@CONNS
@pytest.mark.parametrize(("block", "halo"), [((16, 16), 20), ((13, 11), 18), ((24, 20), 22)])
def test_watershed_objects_smaller_than_halo_are_exact(block, halo, conn) -> None:
    shape = (71, 66)
    img = nuclei_image(7, shape)
    seg = watershed_segmenter(img, conn)
    ref = whole(seg, shape)
    tiled = label_tiled(seg, BlockGrid(shape, block, halo), connectivity=conn)
    mask = ref > 0
    keep = small_blob_objects(ref, mask, halo - RADIUS - 1, conn)
    assert keep.sum() > 200, "the image should hold small objects"
    # objects inside small blobs: identical partition; ids unique among them
    assert_same_partition(np.where(keep, tiled, 0), np.where(keep, ref, 0))
    assert len(np.unique(ref[ref > 0])) > len(np.unique(label(mask, connectivity=conn))) - 1


# -- the real built-in models through segpipe.predict.segment_window -----------------------


def _model_segmenter(name: str, image: np.ndarray):
    from segpipe.models import load_model
    from segpipe.normalize import stats_from_image
    from segpipe.predict import segment_window

    model = load_model(name, device="cpu")
    stats = stats_from_image(image, model.card, "fluorescence")

    def segment(region: tuple[int, int, int, int]) -> np.ndarray:
        y0, x0, y1, x1 = region
        raw = image[:, y0:y1, x0:x1]
        return segment_window(model, raw, stats, (y0, x0), "fluorescence").labels

    return segment, model.card


@pytest.fixture(scope="module")
def nuclei_fluo() -> np.ndarray:
    from segpipe.synthetic import nuclei_sample

    image, _ = nuclei_sample((157, 203), rng=11, modality="fluorescence", diameter_px=(8, 18))
    image = np.asarray(image)
    return image if image.ndim == 3 else image[None]


@pytest.mark.parametrize(("block", "extra"), [((29, 41), 3), ((64, 50), 1)])
def test_classical_model_tiled_equals_whole_image(nuclei_fluo, block, extra) -> None:
    segment, card = _model_segmenter("classical", nuclei_fluo)
    shape = nuclei_fluo.shape[1:]
    tiled = label_tiled(segment, BlockGrid(shape, block, card.halo + extra))
    ref = whole(segment, shape)
    assert ref.max() > 10
    assert_same_partition(tiled, ref)


def test_classical_watershed_objects_smaller_than_halo_are_exact(nuclei_fluo) -> None:
    segment, card = _model_segmenter("classical-watershed", nuclei_fluo)
    shape = nuclei_fluo.shape[1:]
    halo = 40
    tiled = label_tiled(segment, BlockGrid(shape, (37, 45), halo))
    ref = whole(segment, shape)
    keep = small_blob_objects(ref, ref > 0, halo - card.halo, CONNECTIVITY)
    assert len(np.unique(ref[keep])) > 5
    assert_same_partition(np.where(keep, tiled, 0), np.where(keep, ref, 0))
