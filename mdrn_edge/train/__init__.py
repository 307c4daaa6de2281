"""Training: patch datasets, atomic weights-only checkpoints, the trainer (single process or DDP)."""
