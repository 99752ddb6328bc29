"""A Dask worker process SIGKILLed while an image is segmented: same labels, same regions.

Real ``LocalCluster`` with two worker processes (nannies restart the killed one); the
engine's ``segment_image`` must recompute the lost blocks and give exactly what an
undisturbed run gives.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import zarr
from reliability_helpers import nuclei_tif

pytestmark = pytest.mark.timeout(240)


def _labels(url: str) -> np.ndarray:
    return np.asarray(zarr.open_array(url, mode="r")[...])


def test_worker_killed_mid_image(tmp_path):
    from distributed import Client, LocalCluster

    from segpipe.infer import segment_image
    from segpipe.ingest import IngestSpec, ingest_image

    source = nuclei_tif(tmp_path / "slide.tif", side=1024, seed=7)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        spec = IngestSpec(chunk=128, min_size=128)
        calm_url, hit_url = str(tmp_path / "calm.ome.zarr"), str(tmp_path / "hit.ome.zarr")
        ingest_image(str(source), calm_url, spec=spec, client=client)
        ingest_image(str(source), hit_url, spec=spec, client=client)
        calm = segment_image(calm_url, "classical", client=client, blocks="all")

        pids = list(client.run(os.getpid).values())
        killed: list[int] = []

        def progress(done: int, total: int) -> None:
            if not killed and done >= max(3, total // 10):  # a few blocks in: SIGKILL a worker
                os.kill(pids[0], signal.SIGKILL)
                killed.append(done)

        hit = segment_image(hit_url, "classical", client=client, blocks="all", progress=progress)
        assert killed and killed[0] < hit.blocks_total, "the worker was not killed mid-image"
        assert pids[0] not in client.run(os.getpid).values()  # it really died (nanny restarted it)

    assert hit.blocks_processed == calm.blocks_processed == calm.blocks_total
    assert hit.n_regions == calm.n_regions > 50
    np.testing.assert_array_equal(_labels(hit.labels_url + "/0"), _labels(calm.labels_url + "/0"))
    assert sorted(hit.columns) == sorted(calm.columns)
    for name in calm.columns:
        if name == "image_id":
            continue
        np.testing.assert_array_equal(np.asarray(hit.columns[name]), np.asarray(calm.columns[name]),
                                      err_msg=name)
