# Sourced by every SLURM job that runs a Dask worker for segpipe (job_script_prologue).
# Adapt the module names and the virtual environment to your site.
module load python/3.11 2>/dev/null || true
module load cuda/12.8 2>/dev/null || true
source "${SEGPIPE_VENV:-$HOME/segpipe/.venv}/bin/activate"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export OMP_NUM_THREADS=1            # torch threads are set per worker by segpipe
# S3 credentials, if the archive is on S3: the standard AWS profile / environment, e.g.
# export AWS_PROFILE=segpipe
