"""Training: the flat accelerate training loop, checkpoints, EMA and run directories."""
