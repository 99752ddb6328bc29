# Sourced by every SLURM job that runs a Dask worker for segpipe (job_script_prologue).
# Adapt the module names and the virtual environment to your site.
module load python/3.11 2>/dev/null || true
module load cuda/12.8 2>/dev/null || true
source "${SEGPIPE_VENV:-$HOME/segpipe/.venv}/bin/activate"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export OMP_NUM_THREADS=1            # torch threads are set per worker by segpipe
# glibc malloc for image-sized buffers (segpipe.cluster.WORKER_MALLOC_ENV): the Dask nanny's
# default MALLOC_TRIM_THRESHOLD_=65536 makes each one a fresh mmap (~2x the CPU per image)
export MALLOC_MMAP_THRESHOLD_=33554432
export MALLOC_TRIM_THRESHOLD_=16777216
# S3 credentials, if the archive is on S3: the standard AWS profile / environment, e.g.
# export AWS_PROFILE=segpipe
