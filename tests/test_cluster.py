"""cluster.connect / cluster_client / has_gpu_workers on real (tiny) Dask clusters."""

from __future__ import annotations

import sys

import pytest
from distributed import LocalCluster

from segpipe.cluster import ADDRESS_ENV, cluster_client, connect, count_gpus, has_gpu_workers
from segpipe.errors import ConfigError


def _inc(x: int) -> int:
    return x + 1


def test_local_cluster_starts_and_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    with cluster_client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        assert client.submit(_inc, 1).result() == 2
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 1
        assert all(w["nthreads"] == 1 for w in workers.values())
        cluster = client.cluster
        assert cluster is not None
        if count_gpus() == 0:
            assert not has_gpu_workers(client)
    assert client.status == "closed"
    assert cluster.status.name == "closed"


def test_dashboard_link_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    with cluster_client(n_workers=1, threads_per_worker=1, processes=False) as client:
        assert client.dashboard_link.startswith("http")


def test_address_from_env_var_and_gpu_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        resources={"GPU": 1},
    ) as cluster:
        monkeypatch.setenv(ADDRESS_ENV, cluster.scheduler_address)
        client = connect()
        try:
            assert client.scheduler.address == cluster.scheduler_address
            assert client.submit(_inc, 41, resources={"GPU": 1}).result() == 42
            assert has_gpu_workers(client)
        finally:
            client.close()
        # the client did not start the cluster, so closing it leaves the cluster running
        assert cluster.status.name == "running"
        # an explicit address wins over the environment
        monkeypatch.setenv(ADDRESS_ENV, "tcp://127.0.0.1:1")
        with cluster_client(cluster.scheduler_address) as client:
            assert client.submit(_inc, 1).result() == 2


def test_unreachable_address_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADDRESS_ENV, "tcp://127.0.0.1:9")
    with pytest.raises(ConfigError, match="127.0.0.1:9"):
        connect(timeout="1s")


def test_count_gpus_respects_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    if "torch" in sys.modules:
        pytest.skip("torch already imported: count_gpus asks torch instead")
    assert count_gpus() == 0
    assert "torch" not in sys.modules  # counting never imports torch


def test_module_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, segpipe.cluster; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _visible() -> str:
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_local_gpu_cluster_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """With GPUs counted, each worker gets resources GPU=1 and its own CUDA_VISIBLE_DEVICES."""
    import segpipe.cluster as cluster_mod

    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    monkeypatch.setattr(cluster_mod, "count_gpus", lambda: 2)
    monkeypatch.setattr(cluster_mod, "_cpu_count", lambda: 4)  # one worker per card, anywhere
    monkeypatch.setattr(cluster_mod, "_gpu_memory_gib", lambda: None)
    with cluster_client(dashboard_address=None) as client:
        client.wait_for_workers(2)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 2
        for info in workers.values():
            assert info["nthreads"] == 1 and info["resources"] == {"GPU": 1}
        assert has_gpu_workers(client)
        assert sorted(client.run(_visible).values()) == ["5", "7"]
    # 12 cores: 3 workers per card, pinned round-robin
    monkeypatch.setattr(cluster_mod, "_cpu_count", lambda: 12)
    with cluster_client(dashboard_address=None) as client:
        client.wait_for_workers(6)
        assert sorted(client.run(_visible).values()) == ["5", "5", "5", "7", "7", "7"]


def test_workers_per_gpu_uses_the_cores_and_fits_the_card() -> None:
    from segpipe.cluster import workers_per_gpu

    assert workers_per_gpu(16, 1, 80.0) == 8  # one per 2 cores
    assert workers_per_gpu(16, 2, 80.0) == 4
    assert workers_per_gpu(16, 1, 10.0) == 2  # one per 4 GiB of the card
    assert workers_per_gpu(2, 2) == 1 and workers_per_gpu(1, 4, 2.0) == 1  # at least one


@pytest.mark.parametrize("preset", [None, "4"])
def test_local_workers_start_with_two_malloc_arenas(monkeypatch: pytest.MonkeyPatch, preset: str | None) -> None:
    """Fewer glibc arenas: ~200 MiB less at the memory benchmark's peak; a value the user's
    environment sets wins."""
    import os

    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    if preset is None:
        monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    else:
        monkeypatch.setenv("MALLOC_ARENA_MAX", preset)
    try:
        with cluster_client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
            found = set(client.run(os.environ.get, "MALLOC_ARENA_MAX").values())
    finally:  # the nanny writes its pre-spawn variables into this process's environment too
        os.environ.pop("MALLOC_ARENA_MAX", None)
    assert found == {preset or "2"}
