"""Low-level ops: reference PyTorch implementations plus optional fused C++/CUDA kernels (spec §11.5)."""
