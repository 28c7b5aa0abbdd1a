"""The one training loop, its checkpoints, evaluation, and the job that SLURM/local executors run."""
