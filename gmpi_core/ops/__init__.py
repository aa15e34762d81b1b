"""Low-level ops: reference PyTorch implementations plus optional fused C++/CUDA kernels (method §11.5)."""
