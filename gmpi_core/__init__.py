"""gmpi_core: Generative Multiplane Images (ECCV 2022) in plain PyTorch.

Spec references (``spec §N``) point at ``reference/gmpi-spec.md`` of the project docs.
"""

__version__ = "0.1.0"
