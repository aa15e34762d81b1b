"""Videos written a frame at a time (``render_video``): the encoder gets each frame as it is rendered,
so a job's memory holds one batch of frames, not the whole video (600 frames of 2048² RGB were 7.5 GB).

MP4 is H.264 through imageio-ffmpeg exactly as ``gmpi_core.render.io.save_video`` writes it (``quality``
0-10). GIF goes through ffmpeg too (palettegen/paletteuse with a palette per frame, looping): Pillow's
GIF writer, which ``save_video`` uses, keeps every frame until it writes the file. The file appears
under its name only when complete (written as ``.name.part``, then renamed).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

GIF_FILTER = "split[a][b];[a]palettegen=stats_mode=single[p];[b][p]paletteuse=new=1"


class FrameWriter:
    """``append(frame)`` (uint8 HxWx3, or HxW grey) any number of times, then ``close()`` → the path;
    ``abort()`` drops a partial file. Frames must all have the first one's size."""

    def __init__(self, path: str | os.PathLike[str], fps: int, quality: float) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.part{self.path.suffix}")
        self.fps, self.quality = fps, quality
        self.frames = 0
        self._gif = self.path.suffix.lower() == ".gif"
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def _open(self, width: int, height: int) -> None:
        if self._gif:
            import imageio_ffmpeg

            gen = imageio_ffmpeg.write_frames(
                str(self.tmp),
                (width, height),
                fps=self.fps,
                codec="gif",
                pix_fmt_in="rgb24",
                pix_fmt_out="pal8",
                quality=None,
                macro_block_size=1,
                output_params=["-vf", GIF_FILTER, "-loop", "0", "-f", "gif"],
                ffmpeg_log_level="error",
            )
            gen.send(None)
            self._writer = gen
        else:
            import imageio.v2 as imageio

            self._writer = imageio.get_writer(
                self.tmp, format="FFMPEG", fps=self.fps, quality=self.quality, macro_block_size=1
            )

    def append(self, frame: np.ndarray) -> None:
        if frame.ndim == 2 or frame.shape[-1] == 1:
            frame = np.repeat(frame.reshape(*frame.shape[:2], 1), 3, -1)
        height, width = frame.shape[:2]
        if self._writer is None:
            self._size = (width, height)
            self._open(width, height)
        elif self._size != (width, height):
            want = "x".join(map(str, self._size or ()))
            raise ValueError(f"frame {self.frames} is {width}x{height}, not {want}")
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if self._gif:
            self._writer.send(frame)
        else:
            self._writer.append_data(frame)
        self.frames += 1

    def close(self) -> Path:
        if self._writer is None:
            raise ValueError(f"no frames were written to {self.path.name}")
        writer, self._writer = self._writer, None
        writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):  # the partial file is removed either way
                writer.close()
        self.tmp.unlink(missing_ok=True)
