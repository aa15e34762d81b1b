"""Trainer worker (queue ``train``): ``gmpi train`` (torchrun for several GPUs) on a stored dataset."""
