"""robustmtl: group-robustness fine-tuning experiments, from grid files to worst-group tables."""

__version__ = "0.1.0"
