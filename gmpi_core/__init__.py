"""gmpi_core: Generative Multiplane Images (ECCV 2022) in plain PyTorch.

``§N`` in comments (``docs/method.md §N``, ``method §N`` or a bare ``§N``) cite the sections of
``docs/method.md``, the repository's account of the method; ``docs/architecture.md`` maps the code.
"""

__version__ = "0.1.0"
