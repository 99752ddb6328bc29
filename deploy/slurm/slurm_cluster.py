"""Run segpipe's archive flow on a SLURM cluster through dask-jobqueue.

    pip install dask-jobqueue
    python deploy/slurm/slurm_cluster.py /data/slides /data/results --jobs 4 --gpu

The flow (and Prefect) stays in this process; each SLURM job runs one Dask worker.
"""

from __future__ import annotations

import argparse
import os

from dask_jobqueue import SLURMCluster

HERE = os.path.dirname(os.path.abspath(__file__))


def make_cluster(jobs: int, gpu: bool, queue: str | None, account: str | None) -> SLURMCluster:
    """A SLURMCluster whose workers run segpipe's environment (env.sh)."""
    extra = ["--gres=gpu:1"] if gpu else []
    cluster = SLURMCluster(
        queue=queue,
        account=account,
        cores=8,
        processes=4,                      # 4 workers (2 threads each) share the job's GPU, one
                                          # GPU task each (GPU=1): post-processing is the limit
        memory="64GB",
        walltime="08:00:00",
        job_extra_directives=extra,
        worker_extra_args=["--resources", "GPU=1"] if gpu else [],
        job_script_prologue=[f"source {HERE}/env.sh"],
        log_directory=os.path.expanduser("~/segpipe-dask-logs"),
    )
    cluster.scale(jobs=jobs)
    return cluster


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("results")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--queue")
    p.add_argument("--account")
    p.add_argument("--model")
    args = p.parse_args()
    cluster = make_cluster(args.jobs, args.gpu, args.queue, args.account)
    print(cluster.job_script())
    print("scheduler:", cluster.scheduler_address, "dashboard:", cluster.dashboard_link)
    from flows import archive_run

    try:
        summary = archive_run(args.source, args.results, model=args.model,
                              overrides={"run.cluster": cluster.scheduler_address})
        print("\n".join(summary.lines()))
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
