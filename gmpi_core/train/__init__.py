"""Training GMPI (§6): losses, the step, EMA, lighting augmentation, checkpoints, distributed launch."""
