"""Connect to a Dask cluster, or start a local one sized to this machine.

The address comes from the argument or ``SEGPIPE_DASK_ADDRESS`` (a scheduler started with
``dask scheduler`` / dask-jobqueue / dask-kubernetes). Without one, a
``distributed.LocalCluster`` is started that the returned client owns (closing the client
closes it):

* **CPU machine** — one single-threaded worker process per core; memory split evenly
  ("auto"). Processes, not threads: whole-image tasks of small images hold the GIL much
  of the time, and 500 PNGs of 1024² took 69 s with one worker of 2 threads against 51–64 s
  with two single-threaded workers on 2 cores (``benchmarks/bench_overhead.py`` and the
  other benchmarks measure that layout). ``n_workers`` alone gives each worker up to 2
  threads, as many as the cores allow.
* **machine with CUDA GPUs** — single-threaded worker processes, each with
  ``resources={"GPU": 1}`` and a ``CUDA_VISIBLE_DEVICES`` of one card (set by a worker
  plugin before any task imports torch; worker ``i`` gets card ``i mod n_gpus``), so GPU
  tasks submitted with ``resources={"GPU": 1}`` spread over the cards. There are
  :func:`workers_per_gpu` of them per card (one per 2 cores, at most one per 4 GiB of the
  card's memory): a segmentation task spends most of its time post-processing on the CPU
  (watershed, statistics, writes), and threads of one process do not scale past the GIL,
  so one process per card left an H100 at 3 % utilisation and 15 of 16 cores idle
  (``benchmarks/bench_gpu.py``). Each process holds its own copy of the model (a few MB
  for the built-ins, plus a CUDA context of ~0.5 GB); pass ``n_workers=n_gpus`` for
  strictly one model per card.

Local worker processes start with ``MALLOC_ARENA_MAX=2`` (:data:`WORKER_MALLOC_ARENAS`,
unless the environment or Dask's ``distributed.nanny.pre-spawn-environ`` sets it): glibc gives
each thread that allocates its own arena, up to 8 per core, and a task's threads (the task, its
finishing threads, zarr's event loop) then keep several arenas' worth of freed buffers. With two
arenas a run of the 32k² memory benchmark peaked at ~1.5 GiB instead of ~1.7 (8k²: ~1.3 instead
of ~1.44), in the same time (``benchmarks/bench_memory.py``).

GPUs are counted without importing torch (``CUDA_VISIBLE_DEVICES`` / ``nvidia-smi -L``;
torch is only asked when something already imported it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from segpipe.errors import ConfigError

__all__ = [
    "connect", "cluster_client", "has_gpu_workers", "count_gpu_workers", "count_gpus",
    "workers_per_gpu", "worker_threads", "ADDRESS_ENV",
]  # fmt: skip

#: glibc malloc arenas of a local worker process (see the module docstring).
WORKER_MALLOC_ARENAS = 2

#: Environment variable naming the scheduler address to connect to.
ADDRESS_ENV = "SEGPIPE_DASK_ADDRESS"


def _visible_devices() -> list[str] | None:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    value = value.strip()
    if value in ("", "-1"):
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def count_gpus() -> int:
    """Number of CUDA GPUs this process may use (0 when none), without importing torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return int(torch.cuda.device_count())
        except Exception:
            return 0
    visible = _visible_devices()
    if visible is not None and not visible:
        return 0
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    found = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return min(found, len(visible)) if visible is not None else found


class PinGPU(WorkerPlugin):
    """Give worker ``i`` of a local GPU cluster the ``i``-th visible GPU."""

    name = "segpipe-pin-gpu"

    def __init__(self, devices: list[str]) -> None:
        self.devices = devices

    def setup(self, worker: Any) -> None:
        try:
            index = int(str(worker.name).rsplit("-", 1)[-1])
        except ValueError:
            index = abs(hash(worker.name))
        os.environ["CUDA_VISIBLE_DEVICES"] = self.devices[index % len(self.devices)]


def workers_per_gpu(cores: int, n_gpus: int, memory_gib: float | None = None) -> int:
    """Worker processes per GPU for a local cluster: one per 2 cores, at most one per
    4 GiB of the smallest card's memory (``memory_gib``; None = not known), at least 1.

    >>> workers_per_gpu(16, 1, 80.0), workers_per_gpu(16, 1, 8.0), workers_per_gpu(2, 2)
    (8, 2, 1)
    """
    per = max(1, cores // (2 * max(1, n_gpus)))
    if memory_gib is not None:
        per = min(per, max(1, int(memory_gib // 4)))
    return per


def _gpu_memory_gib() -> float | None:
    """Memory of the smallest visible GPU in GiB from ``nvidia-smi`` (None if unknown)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        sizes = [float(v) / 1024 for v in out.stdout.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return min(sizes) if sizes else None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def connect(
    address: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    *,
    processes: bool = True,
    dashboard_address: str | None = ":0",
    timeout: str = "20s",
) -> Client:
    """Return a Dask client: to ``address`` / ``$SEGPIPE_DASK_ADDRESS``, else a local cluster.

    Parameters
    ----------
    address : str, optional
        Scheduler address, e.g. ``tcp://host:8786``. Falls back to ``SEGPIPE_DASK_ADDRESS``.
    n_workers, threads_per_worker, memory_limit : optional
        Local cluster size (defaults: see module docstring); ignored with an address.
    processes : bool
        Local workers as processes (default) or threads of this process.
    dashboard_address : str or None
        Where the local dashboard listens (``":0"`` = a free port, None = no dashboard);
        ``client.dashboard_link`` gives its URL.
    timeout : str
        How long to try reaching a scheduler at ``address``.

    Returns
    -------
    distributed.Client
        Close it with ``client.close()`` (also stops a cluster it started), or use
        :func:`cluster_client`.

    Raises
    ------
    ConfigError
        When the scheduler at the address cannot be reached.
    """
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        try:
            return Client(address, timeout=timeout)
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {address!r} ({exc}); start it or fix "
                f"--cluster / {ADDRESS_ENV}"
            ) from exc
    cores = _cpu_count()
    n_gpus = count_gpus()
    kwargs: dict[str, Any] = {}
    if n_gpus:
        kwargs["resources"] = {"GPU": 1}
        n_workers = n_workers or n_gpus * workers_per_gpu(cores, n_gpus, _gpu_memory_gib())
        threads_per_worker = threads_per_worker or 1
    else:
        n_workers = n_workers or cores
        threads_per_worker = threads_per_worker or max(1, min(2, cores // n_workers))
    if memory_limit is not None:
        kwargs["memory_limit"] = memory_limit
    with dask.config.set(_worker_environ()):  # read by each nanny as it is created
        client = Client(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address=dashboard_address,
            **kwargs,
        )
    if n_gpus and processes:
        visible = _visible_devices() or [str(i) for i in range(n_gpus)]
        client.register_plugin(PinGPU(visible[:n_gpus]))
    return client


def _worker_environ() -> dict[str, Any]:
    """Dask settings that start local workers with :data:`WORKER_MALLOC_ARENAS` arenas,
    unless this process's environment or Dask's configuration already decides it."""
    key = "distributed.nanny.pre-spawn-environ"
    if "MALLOC_ARENA_MAX" in os.environ or "MALLOC_ARENA_MAX" in (dask.config.get(key, None) or {}):
        return {}
    return {f"{key}.MALLOC_ARENA_MAX": WORKER_MALLOC_ARENAS}


@contextmanager
def cluster_client(
    address: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    *,
    processes: bool = True,
    dashboard_address: str | None = ":0",
) -> Iterator[Client]:
    """:func:`connect` as a context manager; the client (and a cluster it started) close on exit.

    >>> with cluster_client(n_workers=1, dashboard_address=None) as client:  # doctest: +SKIP
    ...     print(client.dashboard_link)
    """
    client = connect(
        address,
        n_workers,
        threads_per_worker,
        memory_limit,
        processes=processes,
        dashboard_address=dashboard_address,
    )
    try:
        yield client
    finally:
        client.close()


def has_gpu_workers(client: Client) -> bool:
    """True when at least one worker of ``client``'s cluster offers a ``GPU`` resource."""
    return count_gpu_workers(client) > 0


def count_gpu_workers(client: Client) -> int:
    """Number of workers of ``client``'s cluster that offer a ``GPU`` resource."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return sum(float((w.get("resources") or {}).get("GPU", 0)) > 0 for w in workers.values())


def worker_threads(client: Client) -> int:
    """Threads that run tasks on ``client``'s cluster, summed over its workers (at least 1)."""
    return max(1, sum(client.nthreads().values()))
