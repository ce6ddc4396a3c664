"""Training: experiment config, the one trainer, pluggable methods, checkpoints."""
