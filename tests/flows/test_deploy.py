"""deploy/ and docker/: what can be checked without a Docker daemon or a cluster."""

from __future__ import annotations

import py_compile
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_prefect_yaml_points_at_the_flow_nightly():
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    doc = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    (dep,) = doc["deployments"]
    assert dep["entrypoint"] == "flows/archive.py:archive_run"
    flow = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
    assert flow.name == "archive-run"
    flow.validate_parameters(dep["parameters"])  # the parameters fit the flow's signature
    (schedule,) = dep["schedules"]
    assert schedule["cron"] == "0 2 * * *" and CronSchedule(cron=schedule["cron"], timezone="UTC")
    assert dep["work_pool"]["name"] == "segpipe-pool"


def test_compose_services_and_commands():
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    for name in ("prefect-server", "dask-scheduler", "dask-worker-1", "dask-worker-2", "prefect-worker",
                 "minio", "minio-init"):
        assert name in services, name

    def command(name):
        cmd = services[name]["command"]
        return " ".join(cmd) if isinstance(cmd, list) else cmd

    assert command("prefect-server").startswith("prefect server start")
    assert command("dask-scheduler").startswith("dask scheduler")
    for w in ("dask-worker-1", "dask-worker-2"):
        assert command(w).startswith("dask worker tcp://dask-scheduler:8786")
    assert "prefect worker start --pool segpipe-pool" in command("prefect-worker")
    assert "mc mb --ignore-existing local/archive" in command("minio-init")
    assert "deploy/prefect.yaml" in command("deploy")
    env = services["prefect-worker"]["environment"]
    assert env["SEGPIPE_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"
    assert env["PREFECT_API_URL"].startswith("http://prefect-server:4200")
    assert services["prefect-worker"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert (ROOT / "docker" / "Dockerfile").exists()


def test_kubernetes_dask_cluster_has_gpu_workers():
    docs = _load_all(DEPLOY / "kubernetes" / "dask-cluster.yaml")
    cluster = next(d for d in docs if d["kind"] == "DaskCluster")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    args = worker["args"]
    assert args[:2] == ["dask", "worker"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    (sched,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    assert sched["args"][:2] == ["dask", "scheduler"]
    assert {p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]} == {8786, 8787}


def test_slurm_example_compiles_and_uses_jobqueue():
    script = DEPLOY / "slurm" / "slurm_cluster.py"
    py_compile.compile(str(script), doraise=True)
    text = script.read_text()
    assert "SLURMCluster(" in text and '"--resources", "GPU=1"' in text and "archive_run(" in text
    assert "env.sh" in text and (DEPLOY / "slurm" / "env.sh").exists()


def test_dockerfiles_install_torch_then_package():
    cpu = (ROOT / "docker" / "Dockerfile").read_text()
    cuda = (ROOT / "docker" / "Dockerfile.cuda").read_text()
    assert "download.pytorch.org/whl/cpu" in cpu and "whl/cu" in cuda
    for text in (cpu, cuda):
        torch_at = text.index("torch==")
        assert re.search(r"pip install \"?\.", text[torch_at:]), "the package is installed after torch"
        assert "COPY flows" in text and "COPY segpipe" in text


def test_readme_documents_each_piece():
    text = (DEPLOY / "README.md").read_text()
    for word in ("prefect.yaml", "docker-compose.yml", "dask-cluster.yaml", "slurm_cluster.py",
                 "Dockerfile.cuda", "How to check"):
        assert word in text, word
