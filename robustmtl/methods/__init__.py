"""Methods: one file each, plugged into the one training loop through `Method` (see base.py)."""
