"""Training internals behind `tasks.train`: the loop, batches, DDP ranks, checkpoints and precision."""
