"""Datasets: each file builds train/val/test splits of (inputs, y, a, groups) for one dataset."""
