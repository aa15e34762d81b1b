"""Model sources: the one parser of what ``--model``, ``--init`` and the workers name (docs/method.md §11).

A source is written ``KIND:PATH`` or as a bare path whose kind is read off the files it holds:

=================  ==============================================================================
``random:PRESET``  a randomly initialised model of a preset (``random`` alone: the preset given apart)
``native:DIR``     our format, ``config.json`` + ``weights.safetensors`` [+ ``ema.safetensors``]
``native2d:DIR``   the same format holding a plain 2D StyleGAN2 (``gmpi train --mode stylegan2``)
``stylegan2_pkl:F`` a StyleGAN2-ADA ``.pkl`` snapshot
``official:DIR``   an official GMPI ``config.pth`` + ``ema.pth`` [+ ``generator.pth``] folder
=================  ==============================================================================

A bare folder with ``config.json`` is ``native``; a folder with ``config.pth`` (or a file in one) is
``official``; a ``.pkl`` file is ``stylegan2_pkl``. ``gmpi_pth`` is the services' name for ``official``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FILE_NAMES",
    "SOURCE_KINDS",
    "ModelSource",
    "ModelSourceError",
    "detect_source",
    "parse_source",
]

SOURCE_KINDS = ("random", "native", "native2d", "stylegan2_pkl", "official")
_ALIASES = {"gmpi_pth": "official"}
# The files of each kind that loading reads (recorded with their sha256 by the evaluation).
FILE_NAMES: dict[str, tuple[str, ...]] = {
    "native": ("config.json", "weights.safetensors", "ema.safetensors"),
    "native2d": ("config.json", "weights.safetensors", "ema.safetensors"),
    "official": ("config.pth", "ema.pth", "generator.pth"),
}


class ModelSourceError(ValueError):
    """A source string that names no known kind, or a path that holds no model."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` (one of :data:`SOURCE_KINDS`) and its ``path``, or for
    ``random`` the ``preset`` name (None: given apart)."""

    kind: str
    path: Path | None = None
    preset: str | None = None

    def __str__(self) -> str:
        if self.kind == "random":
            return f"random:{self.preset}" if self.preset else "random"
        return f"{self.kind}:{self.path}"

    def files(self) -> list[Path]:
        """The files that loading this source reads (those that exist)."""
        if self.path is None:
            return []
        if self.kind not in FILE_NAMES:
            return [self.path] if self.path.is_file() else []
        return [self.path / n for n in FILE_NAMES[self.kind] if (self.path / n).is_file()]


def detect_source(path: str | Path) -> ModelSource:
    """The source a bare path holds (see the module docstring); ``ModelSourceError`` when none."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelSourceError(f"{p}: no such file or folder")
    if p.is_dir() and (p / "config.json").is_file():
        return ModelSource("native", p)
    root = p.parent if p.is_file() else p
    if (root / "config.pth").is_file():
        return ModelSource("official", root)
    if p.is_file() and p.suffix == ".pkl":
        return ModelSource("stylegan2_pkl", p)
    raise ModelSourceError(
        f"{p} is neither a native checkpoint (config.json + weights.safetensors), an official GMPI "
        "checkpoint directory (config.pth + ema.pth) nor a StyleGAN2-ADA .pkl"
    )


def parse_source(text: str, *, kinds: tuple[str, ...] = SOURCE_KINDS) -> ModelSource:
    """``KIND:PATH``, ``random[:PRESET]`` or a bare path (detected) → :class:`ModelSource`.

    ``kinds``: the kinds accepted here. A named path must exist; ``ModelSourceError`` otherwise."""
    kind, sep, rest = text.partition(":")
    kind = _ALIASES.get(kind, kind)
    if kind == "random":
        source = ModelSource("random", preset=rest or None)
    elif sep and kind in SOURCE_KINDS:
        path = Path(rest).expanduser()
        if not path.exists():
            raise ModelSourceError(f"{kind}: {path} does not exist")
        if kind == "official" and path.is_file():  # a file of the checkpoint means its folder
            path = path.parent
        source = ModelSource(kind, path)
    else:
        source = detect_source(text)
    if source.kind not in kinds:
        raise ModelSourceError(f"a {source.kind} model cannot be used here (accepted: {', '.join(kinds)})")
    return source
