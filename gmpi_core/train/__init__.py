"""Training GMPI (spec §6): losses, the step, EMA, lighting augmentation, checkpoints, distributed launch."""
