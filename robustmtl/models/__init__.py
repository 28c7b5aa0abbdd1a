"""Encoders with a classifier head and their pre-training (auxiliary) objective."""
